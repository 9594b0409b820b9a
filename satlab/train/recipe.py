"""A training recipe: everything about HOW a model is trained that determines its weights.

The defaults live in one config file, `conf/recipe/default.yaml`; the configs compose it where a recipe is
needed (`model_set.train` of a zoo, `train.recipe` of task=train, `distill.recipe` of task=distill) and
override what differs. Optimizer, scheduler and loss are `_target_` nodes (lightning-hydra-template style;
optimizer and scheduler with `_partial_: true`). Scheduler arguments that depend on the run are filled in when
left out: `total_steps` (Trainer's estimated stepping batches) and `max_lr` (the optimizer's lr). Values are
checked with the rest of the config (`satlab.tasks.checks`), before any work.

    >>> recipe = Recipe.from_config({"epochs": 2}, {"optimizer": {"lr": 1e-3}})   # defaults <- layer <- layer
    >>> recipe.cfg["epochs"], recipe.cfg["optimizer"]["lr"], recipe.cfg["batch_size"]
    (2, 0.001, 64)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

from satlab.utils import SatlabError, conf_dir, plain

NOT_IN_KEY = ("num_workers", "cache_images")  # how data is loaded, not what is learnt: left out of cache keys


@lru_cache(maxsize=1)
def defaults() -> dict[str, Any]:
    """`conf/recipe/default.yaml` as a plain mapping."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(conf_dir() / "recipe" / "default.yaml"), resolve=True)


@dataclass(frozen=True)
class Recipe:
    """A recipe. `cfg` is the full plain mapping (defaults filled in)."""

    cfg: Mapping[str, Any]

    @classmethod
    def from_config(cls, *layers: Mapping[str, Any] | None) -> "Recipe":
        """The defaults merged (OmegaConf) with each layer in turn (a model set's recipe, then a model's own)."""
        from omegaconf import OmegaConf

        merged = OmegaConf.merge(defaults(), *(plain(layer) or {} for layer in layers))
        cfg = OmegaConf.to_container(merged, resolve=True)
        unknown = sorted(set(cfg) - set(defaults()))
        if unknown:
            raise SatlabError(f"training recipe: unknown key(s) {unknown}; known: {sorted(defaults())}")
        return cls(cfg)

    def key(self) -> dict[str, Any]:
        """The part of the recipe that determines the weights (enters cache keys)."""
        return {k: v for k, v in self.cfg.items() if k not in NOT_IN_KEY}

    def build(self, name: str) -> Any:
        """Instantiate the `_target_` nodes by name: 'optimizer', 'scheduler' (None if null) or 'loss'."""
        from hydra.utils import instantiate

        node = self.cfg.get(name)
        if node is None:
            return None
        try:
            return instantiate(node)
        except Exception as err:  # noqa: BLE001 - hydra wraps import and argument errors
            cause = err.__cause__ or err
            raise SatlabError(f"training recipe: cannot build {name} ({str(cause).splitlines()[0]})") from None
