"""The training layer: a DataModule per dataset, a classifier LightningModule built from config, the Trainer
from `conf/trainer`, content-keyed safetensors checkpoints. Used by the digits zoo, `task=train` and (next)
distillation.

    recipe.py      a training recipe (epochs, batch size, optimizer / scheduler / loss `_target_` nodes, augmentation)
    datamodule.py  ClassificationDataModule: train / val / eval splits, augmentation, workers, decoded-image cache
    module.py      ClassifierModule: network + optimizer + scheduler + loss, torchmetrics accuracy, head-only mode
    fit.py         the Trainer from config, and train-or-load under a content key
"""

from satlab.train.datamodule import ClassificationDataModule
from satlab.train.fit import build_trainer, engine_trainer_kwargs, train_or_load
from satlab.train.module import ClassifierModule, head_parameters
from satlab.train.recipe import Recipe

__all__ = [
    "ClassificationDataModule",
    "ClassifierModule",
    "Recipe",
    "build_trainer",
    "engine_trainer_kwargs",
    "head_parameters",
    "train_or_load",
]
