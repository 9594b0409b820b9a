"""task=train: train or fine-tune every model of a model set on a dataset, and write a manifest that
`task=sat` reads with `model_set.trained_from=<this run dir>`.

Source weights: pretrained (timm), `checkpoint_path`, a zoo model (trained first on `train.source_dataset`),
or random init. Each gets a new head for the dataset's classes; `train.mode=full` trains every weight,
`train.mode=head` only the head (a linear probe). Trained weights are cached under
`${paths.cache_dir}/trained/`, keyed by the source weights' hash, the training data's content and the recipe.
Outputs: trained_models.json (manifest), train_results.csv, summary.json.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from functools import partial

import pandas as pd
from omegaconf import DictConfig

from satlab.data import data_fingerprint
from satlab.models.factory import build_model
from satlab.models.specs import model_specs
from satlab.tasks.common import build, eval_data, open_models, output_dir, trainer_config, write_summary
from satlab.train import Recipe, Training
from satlab.train.finetune import MANIFEST, with_new_head, write_manifest
from satlab.train.module import head_module
from satlab.utils import SatlabError, state_dict_hash, write_csv

log = logging.getLogger(__name__)
MODES = {"full": "all", "head": "head"}


def run(cfg: DictConfig) -> dict:
    """Train every model of `cfg.model_set` on `cfg.dataset` from its source weights with a new head."""
    params = cfg.train
    mode = str(params.mode)
    out = output_dir(cfg)
    recipe = Recipe.from_config(params.recipe)
    start = time.perf_counter()
    data = eval_data(cfg)
    if data.train is None or len(data.train) == 0:
        raise SatlabError(f"dataset '{data.name}' has an empty train split; task=train needs training images")
    sources = open_models(cfg, source_dataset(cfg, data), own_heads=True)
    seed = int(params.seed)
    if mode == "head":  # every model must have a known head before anything is trained
        for spec in sources.specs:
            untrained = replace(spec, pretrained=False, checkpoint_path=None)
            head_module(build_model(untrained, data.num_classes, data.resolution, seed), spec.name)
    trained, rows = {}, []
    for i, spec in enumerate(sources.specs):
        with sources.use(i) as source:
            if not (spec.pretrained or spec.checkpoint_path or spec.train_seed is not None):
                log.warning("%s: no source weights (not pretrained, no checkpoint): training from random init",
                            spec.name)
            identity = {"arch": spec.timm_name, "model_args": dict(spec.model_args),
                        "source_weights": state_dict_hash(source.model.state_dict()), "mode": mode}
            net, info = Training(partial(with_new_head, source.model, spec, data.num_classes, data.resolution, seed),
                                 spec.name, recipe, data, cfg.paths.cache_dir, trainer_config(cfg), seed=seed,
                                 identity=identity, trainable=MODES[mode]).run()
        trained[spec.name] = {**info, "input_size": spec.input_size, "fingerprint": net.fingerprint(),
                              "source_weights": identity["source_weights"]}
        rows.append({"model": spec.name, "family": spec.family, "test_accuracy": info["test_accuracy"],
                     "val_accuracy": info["val_accuracy"], "epochs": info["epochs"], "cached": info["cached"],
                     "train_seconds": info["train_seconds"]})
        print(f"{spec.name}: test accuracy {info['test_accuracy']:.3f}" + (" (cached)" if info["cached"] else ""))
    write_manifest(out / MANIFEST, data, data_fingerprint(data.train), mode, trained)
    write_csv(out / "train_results.csv", pd.DataFrame(rows))
    summary = {"mode": mode, "dataset": data.name, "models": trained, "dataset_notes": data.notes}
    write_summary(out, cfg, {"sources_and_training": time.perf_counter() - start}, **summary)
    print(f"trained models in {out}; use them with: task=sat model_set.trained_from={out}")
    return summary


def source_dataset(cfg: DictConfig, data):
    """The dataset zoo models are trained on before fine-tuning (`train.source_dataset`); else `data`."""
    zoo = [s.name for s in model_specs(cfg.model_set) if s.train_seed is not None]
    if not zoo or cfg.model_set.get("trained_from"):
        return data
    if cfg.train.get("source_dataset") is None:
        raise SatlabError(f"{', '.join(zoo)} are zoo models: set train.source_dataset (the dataset their source "
                          "weights are trained on, e.g. +dataset@train.source_dataset=digits)")
    return build(cfg.train, "source_dataset")
