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

import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

from satlab.schema import BOOL, COUNT, SEED, WORKERS, Key, check_keys, one_line, shown
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


# --- checks (run by satlab.tasks.checks.check_config on every recipe of the config, before any work) ---------

# A training recipe (satlab.train.recipe), relative to where it sits. optimizer, scheduler and loss are
# `_target_` nodes, checked by building them (`check_recipe`).
RECIPE: dict[str, Key] = {
    "epochs": COUNT,
    "batch_size": COUNT,
    "scheduler_interval": Key("choice", choices=("step", "epoch")),
    "augment.max_shift": Key("int", 0, note="random shifts of up to this many pixels"),
    "augment.hflip": BOOL,
    "val_fraction": Key("number", 0, 1, open_high=True, note="share of the train split held out; 0: none"),
    "split_seed": SEED,
    "num_workers": WORKERS,
    "cache_images": Key("bool", words=("auto",)),
}
RECIPE_NODES = ("optimizer", "scheduler", "loss")
DEFAULT_TARGETS = {"optimizer": "torch.optim.AdamW", "scheduler": "torch.optim.lr_scheduler.OneCycleLR",
                   "loss": "torch.nn.CrossEntropyLoss"}  # shown in messages

def _reason(err: BaseException) -> str:
    """What went wrong, in one line: the cause Hydra wraps, else the error itself."""
    cause = err.__cause__ or err
    return one_line(str(cause)).rstrip(":") or type(cause).__name__


def check_recipe(node: Any, where: str, base: Any = None) -> None:
    """Check the recipe `node` found at `where` (a dotted key, for messages): known keys, typed values, and a
    trial build of its optimizer (on a dummy parameter), scheduler and loss. `base`: the recipe `node` overrides
    (a catalog model's `train` overrides `model_set.train`); then only the nodes `node` changes are built."""
    from omegaconf import OmegaConf

    layer = plain(node)
    if not isinstance(layer, Mapping):
        raise SatlabError(f"{where}={shown(layer)} must be a mapping of recipe keys ({', '.join(defaults())})")
    unknown = [k for k in layer if k not in defaults()]
    augment = layer.get("augment")
    if isinstance(augment, Mapping):
        unknown += [f"augment.{k}" for k in augment if f"augment.{k}" not in RECIPE]
    elif "augment" in layer:
        unknown.append("augment")
    if unknown:
        raise SatlabError(f"{where}.{unknown[0]} is not a recipe key; known: {', '.join(defaults())} (augment: "
                          f"{', '.join(k.split('.')[1] for k in RECIPE if k.startswith('augment.'))})")
    check_keys(OmegaConf.create(layer), RECIPE, prefix=f"{where}.")
    recipe = OmegaConf.to_container(OmegaConf.merge(defaults(), plain(base) or {}, layer), resolve=True)
    changed = [n for n in RECIPE_NODES if base is None or n in layer]
    if changed:
        _try_nodes(recipe, where, changed)


def _build(recipe: Mapping[str, Any], name: str, where: str) -> Any:
    from hydra.utils import instantiate

    node = recipe.get(name)
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise SatlabError(f"{where}.{name}={shown(node)} must be a _target_ node, e.g. "
                          f"{{_target_: {DEFAULT_TARGETS[name]}, ...}}")
    try:
        return instantiate(node)
    except Exception as err:  # noqa: BLE001 - Hydra wraps import and argument errors
        raise SatlabError(f"{where}.{name}: {_reason(err)}") from None


def _try_nodes(recipe: Mapping[str, Any], where: str, names: list[str]) -> None:
    """Build the optimizer on a dummy parameter, the scheduler on it, and the loss on two dummy logits."""
    import torch

    optimizer = _build(recipe, "optimizer", where)
    try:
        opt = optimizer(params=[torch.nn.Parameter(torch.zeros(1))])
    except Exception as err:  # noqa: BLE001 - the optimizer's own argument checks
        raise SatlabError(f"{where}.optimizer: {_reason(err)}") from None
    if "scheduler" in names and recipe.get("scheduler") is not None:
        scheduler = _build(recipe, "scheduler", where)
        func, given = getattr(scheduler, "func", scheduler), getattr(scheduler, "keywords", {})
        try:
            accepted = inspect.signature(func).parameters
        except (TypeError, ValueError):
            accepted = {}
        fill = {k: v for k, v in (("total_steps", 1000), ("max_lr", opt.defaults.get("lr"))) if k in accepted
                and k not in given and not (k == "total_steps" and "epochs" in given)}  # as the classifier fills
        try:
            scheduler(opt, **fill)
        except Exception as err:  # noqa: BLE001 - the scheduler's own argument checks
            raise SatlabError(f"{where}.scheduler: {_reason(err)}") from None
    if "loss" in names:
        loss = _build(recipe, "loss", where)
        try:
            loss(torch.zeros(2, 3), torch.tensor([0, 1]))
        except Exception as err:  # noqa: BLE001 - the loss's own argument checks
            raise SatlabError(f"{where}.loss: {_reason(err)}") from None
