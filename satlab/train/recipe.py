"""A training recipe: everything about HOW a model is trained that determines its weights.

A recipe is a plain mapping (a model set's `train` node merged with a model's own `train` overrides, or
`train.recipe` of task=train) in lightning-hydra-template style: optimizer, scheduler and loss are `_target_`
nodes (optimizer and scheduler with `_partial_: true`). Scheduler arguments that depend on the run are filled
in when left out: `total_steps` (Trainer's estimated stepping batches) and `max_lr` (the optimizer's lr).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

from satlab.utils import SatlabError

DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 64,
    "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 3.0e-3, "weight_decay": 0.05},
    "scheduler": {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "_partial_": True, "pct_start": 0.2},
    "scheduler_interval": "step",
    "loss": {"_target_": "torch.nn.CrossEntropyLoss", "label_smoothing": 0.0},
    "augment": {"max_shift": 2, "hflip": False},
    "val_fraction": 0.0,  # share of the train split held out for validation; 0: validate on the eval split
    "split_seed": 0,
    "num_workers": 0,  # how data is loaded, not what is learnt: left out of cache keys
    "cache_images": "auto",
}
NOT_IN_KEY = ("num_workers", "cache_images")


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of plain mappings (`override` wins); a `_target_` change replaces the whole node."""
    out = copy.deepcopy(dict(base))
    for key, value in dict(override).items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping) and old.get("_target_") == value.get(
            "_target_", old.get("_target_")
        ):
            out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. `cfg` is the full plain mapping (defaults filled in)."""

    cfg: Mapping[str, Any]

    @classmethod
    def from_config(cls, *layers: Mapping[str, Any] | None) -> "Recipe":
        """DEFAULTS merged with each layer in turn (model set defaults, then per-model overrides)."""
        cfg: dict[str, Any] = dict(DEFAULTS)
        for layer in layers:
            cfg = merge(cfg, _plain(layer or {}))
        unknown = sorted(set(cfg) - set(DEFAULTS))
        if unknown:
            raise SatlabError(f"training recipe: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
        for key in ("epochs", "batch_size"):
            if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
                raise SatlabError(f"training recipe: {key} must be a positive integer, got {cfg[key]!r}")
        if not 0.0 <= float(cfg["val_fraction"]) < 1.0:
            raise SatlabError(f"training recipe: val_fraction must be in [0, 1), got {cfg['val_fraction']!r}")
        if cfg["scheduler_interval"] not in ("step", "epoch"):
            raise SatlabError("training recipe: scheduler_interval must be 'step' or 'epoch'")
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


def _plain(obj: Any) -> Any:
    """OmegaConf containers -> plain Python."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(obj):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return obj
