"""The digits zoo: small timm architectures that satlab trains on the spot (through `satlab.train`) and caches.

A zoo model is a spec with `train_seed`. Its recipe is the model set's `train` node merged with the spec's own
`train` overrides (`satlab.train.recipe`). Its weights are cached as safetensors under
`<cache_dir>/zoo/<name>-<key>.safetensors`, where the key hashes everything that determines them: architecture,
arguments, the name-derived init seed, train seed, the initial weights' hash, the training data's content, the
full recipe, the Trainer options that change results, resolution, class count and a version.
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from satlab.data import DatasetSplits
from satlab.models.factory import create_timm, data_overrides
from satlab.models.specs import ModelSpec
from satlab.models.wrapper import PixelModel
from satlab.train import Recipe, train_or_load
from satlab.utils import SatlabError


def build_zoo_model(spec: ModelSpec, num_classes: int, resolution: int) -> PixelModel:
    """The untrained architecture, wrapped to take pixels at the dataset resolution unless the spec says else."""
    model = create_timm(replace(spec, pretrained=False), num_classes, int(spec.train_seed or 0))
    return PixelModel.from_timm(model, data_overrides(replace(spec, input_size=spec.input_size or "dataset"), resolution))


def zoo_recipe(spec: ModelSpec, train: Mapping[str, Any] | None) -> Recipe:
    """The model set's recipe with the spec's own overrides."""
    try:
        return Recipe.from_config(train, spec.train)
    except SatlabError as err:
        raise SatlabError(f"model '{spec.name}': {err}") from None


def load_or_train(
    spec: ModelSpec,
    data: DatasetSplits,
    train: Mapping[str, Any] | None,
    cache_dir: str | Path,
    trainer_cfg: Mapping[str, Any] | None = None,
) -> tuple[PixelModel, dict[str, Any]]:
    """Load a zoo model from the cache, or train it on `data.train` and cache it. Returns (model, info)."""
    seed = int(spec.train_seed or 0)
    identity = {
        "arch": spec.timm_name,
        "model_args": dict(spec.model_args),
        "init_seed": zlib.crc32(f"{seed}:{spec.name}".encode()),
        "train_seed": seed,
    }
    return train_or_load(
        lambda: build_zoo_model(spec, data.num_classes, data.resolution), spec.name, zoo_recipe(spec, train), data,
        cache_dir, trainer_cfg, seed=seed, identity=identity, subdir="zoo",
    )
