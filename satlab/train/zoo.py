"""Zoo models: small timm architectures that satlab trains itself on the dataset's train split, and caches.

A zoo model is a spec with `train_seed`. Its recipe is the model set's `train` node merged with the spec's own
`train` overrides. Its weights are cached as safetensors under `<cache_dir>/zoo/<name>-<key>.safetensors`, where
the key hashes everything that determines them: architecture, arguments, the name-derived init seed, train
seed, the initial weights' hash, the training data's content, the full recipe, the Trainer options that change
results, resolution, class count and a version. The JSON beside the weights records the trained model's
content key, so a model set knows it without loading the weights.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from satlab.data import DatasetSplits
from satlab.models.factory import build_model, check_arch, init_seed
from satlab.models.specs import ModelSpec
from satlab.models.wrapper import PixelModel
from satlab.train.fit import Training
from satlab.train.recipe import Recipe
from satlab.utils import SatlabError


def zoo_recipe(spec: ModelSpec, train: Mapping[str, Any] | None) -> Recipe:
    """The model set's recipe with the spec's own overrides."""
    try:
        return Recipe.from_config(train, spec.train)
    except SatlabError as err:
        raise SatlabError(f"model '{spec.name}': {err}") from None


class ZooSource:
    """A zoo model's weights: trained on `data.train` with the recipe, or read from the cache (a model-set source).

    Args:
        spec: the model (with `train_seed`).
        data: the dataset it is trained and checked on.
        train: the model set's recipe node (`model_set.train`).
        cache_dir: the cache; trainer_cfg: conf/trainer + conf/callbacks (`satlab.lightning.trainer_settings`).
    """

    def __init__(self, spec: ModelSpec, data: DatasetSplits, train: Mapping[str, Any] | None, cache_dir: str | Path,
                 trainer_cfg: Mapping[str, Any] | None = None) -> None:
        self.spec, self.data, self.train, self.cache_dir, self.trainer_cfg = spec, data, train, cache_dir, trainer_cfg

    def untrained(self) -> PixelModel:
        """The architecture before training, at the dataset's resolution unless the spec says else."""
        seed = int(self.spec.train_seed or 0)
        return build_model(replace(self.spec, pretrained=False, checkpoint_path=None), self.data.num_classes,
                           self.data.resolution, seed)

    @cached_property
    def training(self) -> Training:
        seed = int(self.spec.train_seed or 0)
        identity = {"arch": self.spec.timm_name, "model_args": dict(self.spec.model_args),
                    "init_seed": init_seed(seed, self.spec.name), "train_seed": seed}
        return Training(self.untrained, self.spec.name, zoo_recipe(self.spec, self.train), self.data, self.cache_dir,
                        self.trainer_cfg, seed=seed, identity=identity, subdir="zoo")

    def check(self) -> None:
        """The name, the recipe, and whether the architecture takes the dataset's images, before any training."""
        check_arch(self.spec.timm_name)
        zoo_recipe(self.spec, self.train)
        self.untrained()  # build_model checks the input size

    def stored_key(self) -> str | None:
        info = self.training.stored_info()
        return None if info is None else info.get("fingerprint")

    def load(self) -> tuple[PixelModel, dict[str, Any]]:
        return self.training.run()
