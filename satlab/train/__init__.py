"""The training layer (above models/): a DataModule per dataset, a classifier LightningModule built from config,
content-keyed safetensors checkpoints, and the sources of weights that need training. Used by the digits zoo,
`task=train` (fine-tuning) and `task=distill`. The Trainer comes from `satlab.lightning` (conf/trainer).

    recipe.py      a training recipe (defaults in conf/recipe/default.yaml, merged with OmegaConf)
    datamodule.py  ClassificationDataModule: train / val / eval splits, augmentation, workers, decoded-image cache
    module.py      ClassifierModule: network + optimizer + scheduler + loss, torchmetrics accuracy, head-only mode
    fit.py         Training: train-or-load under a content key
    zoo.py         ZooSource: zoo models trained on the dataset and cached
    finetune.py    a new head for fine-tuning; TrainedSource: models of a task=train run (trained_models.json)
    model_set.py   open_model_set: a model-set config -> ModelSet (the one way every task gets its models)
    distill.py     distillation loss and DistillModule; distill_results.py: gains, CIs, gain vs SAT
"""

from satlab.train.datamodule import ClassificationDataModule
from satlab.train.fit import Training
from satlab.train.model_set import open_model_set
from satlab.train.module import ClassifierModule, accuracy
from satlab.train.recipe import Recipe

__all__ = ["ClassificationDataModule", "ClassifierModule", "Recipe", "Training", "accuracy", "open_model_set"]
