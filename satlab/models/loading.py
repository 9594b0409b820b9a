"""Load every model of a model set: zoo models are trained or read from the cache, others built from timm."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from satlab.data import DatasetSplits
from satlab.models.factory import build_model, check_arch, check_classes, check_input_size
from satlab.models.specs import ModelSpec
from satlab.models.wrapper import PixelModel
from satlab.models.zoo import TrainConfig, build_zoo_model, load_or_train
from satlab.utils import SatlabError


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: PixelModel
    key: str  # hash of the weights and preprocessing (PixelModel.fingerprint), for cache keys
    info: dict[str, Any] = field(default_factory=dict)


def load_models(
    specs: Sequence[ModelSpec],
    data: DatasetSplits,
    seed: int,
    cache_dir: str | Path,
    train: Mapping[str, Any] | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> list[LoadedModel]:
    """Build (or train and cache, for zoo specs) every model, checking it against the dataset's classes."""
    for spec in specs:  # every name and class count is checked before anything is trained or downloaded
        check_arch(spec.timm_name)
        check_classes(spec, data.num_classes)
        if spec.train_seed is not None:  # before training anything: can the model take the dataset's images?
            check_input_size(build_zoo_model(spec, data.num_classes, data.resolution), spec.name, data.resolution)
    try:
        train_cfg = TrainConfig(**dict(train or {}))
    except TypeError as err:
        raise SatlabError(f"model_set.train: {err}; known keys: {list(TrainConfig.__dataclass_fields__)}") from None
    loaded = []
    for spec in specs:
        if spec.train_seed is not None:
            model, _, info = load_or_train(
                spec, data.train, data.eval, data.num_classes, data.resolution, data.name, train_cfg,
                cache_dir, trainer_kwargs,
            )
        else:
            model, info = build_model(spec, data.num_classes, data.resolution, seed), {}
        loaded.append(LoadedModel(spec, model, model.fingerprint(), info))
    return loaded
