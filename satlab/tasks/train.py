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

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from satlab.data import data_fingerprint
from satlab.models.factory import check_arch, create_timm
from satlab.models.loading import load_models
from satlab.models.specs import model_specs
from satlab.tasks.common import build, output_dir, write_summary
from satlab.train import Recipe, train_or_load
from satlab.train.finetune import MANIFEST, source_network, with_new_head, write_manifest
from satlab.train.module import head_module
from satlab.utils import SatlabError, write_csv, state_dict_hash

log = logging.getLogger(__name__)
MODES = {"full": "all", "head": "head"}


def run(cfg: DictConfig) -> dict:
    """Train every model of `cfg.model_set` on `cfg.dataset` from its source weights with a new head."""
    params = cfg.train
    mode = str(params.mode)
    if mode not in MODES:
        raise SatlabError(f"train.mode must be one of {', '.join(MODES)} (head = linear probe), got {mode!r}")
    out = output_dir(cfg)
    specs = model_specs(cfg.model_set)
    for spec in specs:
        check_arch(spec.timm_name)
    zoo = [s for s in specs if s.train_seed is not None]
    if zoo and params.get("source_dataset") is None:
        raise SatlabError(f"{', '.join(s.name for s in zoo)} are zoo models: set train.source_dataset (the dataset "
                          "their source weights are trained on, e.g. +dataset@train.source_dataset=digits)")
    recipe = Recipe.from_config(OmegaConf.to_container(params.recipe, resolve=True))
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    data = build(cfg, "dataset")
    if data.train is None or len(data.train) == 0:
        raise SatlabError(f"dataset '{data.name}' has an empty train split; task=train needs training images")
    seed = int(params.seed)
    if mode == "head":  # every model must have a known head before anything is trained
        for spec in specs:
            head_module(create_timm(replace(spec, pretrained=False), data.num_classes, seed), spec.name)
    sources = {}
    if zoo:
        source_data = build(cfg.train, "source_dataset")
        for item in load_models(zoo, source_data, seed, cfg.paths.cache_dir, cfg.model_set.get("train"), trainer_cfg):
            sources[item.spec.name] = item.model.model
    timings["sources"] = time.perf_counter() - start
    start = time.perf_counter()
    trained, rows = {}, []
    for spec in specs:
        source = sources.get(spec.name)
        if source is None:
            source = source_network(spec, seed)
        if not (spec.pretrained or spec.checkpoint_path or spec.name in sources):
            log.warning("%s: no source weights (not pretrained, no checkpoint): training from random init", spec.name)
        input_size = spec.input_size or ("dataset" if spec.train_seed is not None else None)
        identity = {"arch": spec.timm_name, "model_args": dict(spec.model_args),
                    "source_weights": state_dict_hash(source.state_dict()), "mode": mode}
        net, info = train_or_load(
            lambda: with_new_head(source, spec, data.num_classes, data.resolution, seed, input_size), spec.name,
            recipe, data, cfg.paths.cache_dir, trainer_cfg, seed=seed, identity=identity, trainable=MODES[mode],
        )
        trained[spec.name] = {**info, "input_size": input_size, "fingerprint": net.fingerprint(),
                              "source_weights": identity["source_weights"]}
        rows.append({"model": spec.name, "family": spec.family, "test_accuracy": info["test_accuracy"],
                     "val_accuracy": info["val_accuracy"], "epochs": info["epochs"], "cached": info["cached"],
                     "train_seconds": info["train_seconds"]})
        print(f"{spec.name}: test accuracy {info['test_accuracy']:.3f}" + (" (cached)" if info["cached"] else ""))
    timings["train"] = time.perf_counter() - start
    write_manifest(out / MANIFEST, data, data_fingerprint(data.train), mode, trained)
    write_csv(out / "train_results.csv", pd.DataFrame(rows))
    summary = {"mode": mode, "dataset": data.name, "models": trained}
    write_summary(out, cfg, timings, **summary)
    print(f"trained models in {out}; use them with: task=sat model_set.trained_from={out}")
    return summary
