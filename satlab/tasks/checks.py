"""Types and ranges of the config's scalar keys, checked once before any task runs.

`SCHEMA` maps a dotted key to what it must hold. Keys absent from the composed config (another task's
options) are skipped. The semantic checks of a stage's own options (attack budgets, analysis ranges, cache
dirs) stay in that stage; here keys are only typed so that `seed=1.5` or `sat.resume=maybe` never reach code
that would silently read them as 1 or True. Add a key: one line in SCHEMA.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from satlab.utils import SatlabError

_ABSENT = object()


@dataclass(frozen=True)
class Key:
    """What one config key may hold: kind is bool, int, number or choice; `low`/`high` bound numbers."""

    kind: str
    low: float | None = None
    high: float | None = None
    nullable: bool = False
    choices: tuple = ()
    note: str = ""

    def problem(self, value: Any) -> str | None:
        """None if `value` fits, else what the key must be."""
        if value is None and self.nullable:
            return None
        if self.kind == "choice":
            known = [str(c) for c in self.choices]  # 32 and "32" are the same precision
            return None if str(value) in known and not isinstance(value, bool) else f"must be one of {', '.join(known)}"
        if self.kind == "bool":
            return None if isinstance(value, bool) else "must be true or false"
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if self.kind == "int" and not is_int:
            return f"must be an integer{self._range()}"
        if self.kind == "number" and not (is_int or isinstance(value, float) and math.isfinite(value)):
            return f"must be a finite number{self._range()}"
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            return f"must be {'an integer' if self.kind == 'int' else 'a number'}{self._range()}"
        return None

    def _range(self) -> str:
        parts = [f"{op} {_num(bound)}" for op, bound in ((">=", self.low), ("<=", self.high)) if bound is not None]
        text = " and ".join(parts)
        return (f" {text}" if text else "") + (" or null" if self.nullable else "")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _precisions() -> tuple:
    """The `precision` values Lightning accepts (its typing literals; a fixed list if those move)."""
    try:
        from lightning_fabric.connector import _PRECISION_INPUT_INT, _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

        values = [v for t in (_PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS, _PRECISION_INPUT_INT)
                  for v in typing.get_args(t)]
        return tuple(v for i, v in enumerate(values) if str(v) not in map(str, values[:i]))
    except ImportError:  # pragma: no cover - depends on the Lightning version
        return ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", 32, 16, 64, "32", "16",
                "64", "bf16")


def _accelerators() -> tuple:
    try:
        from pytorch_lightning.accelerators import AcceleratorRegistry

        return ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))
    except ImportError:  # pragma: no cover
        return ("auto", "cpu", "gpu", "cuda", "mps")


INT = Key("int")
NUMBER = Key("number")
BOOL = Key("bool")

SCHEMA: dict[str, Key] = {
    "seed": Key("int", 0, 2**32 - 1, note="numpy and torch take seeds in [0, 2^32-1]"),
    "sat.batch_size": Key("int", 1),
    "sat.num_workers": Key("int", 0),
    "sat.resume": BOOL,
    "sat.print_table": BOOL,
    "sat.eps_s": NUMBER,
    "trainer.precision": Key("choice", choices=_precisions()),
    "trainer.accelerator": Key("choice", choices=_accelerators()),
    "trainer.enable_progress_bar": BOOL,
    "model_set.pretrained": BOOL,
    "model_set.uncatalogued": Key("choice", choices=("refuse", "random", "pretrained")),
    "logger.mode": Key("choice", choices=("offline", "online", "disabled")),
    # typed only: their ranges are checked by task=analyze itself
    "analyze.seed": INT,
    "analyze.importance_seeds": INT,
    "analyze.test_size": NUMBER,
    "analyze.n_repeats": INT,
    "analyze.n_estimators": INT,
    "analyze.max_clusters": INT,
    "analyze.top_pairs": INT,
    "analyze.symmetric_tol": NUMBER,
}


def check_config(cfg: DictConfig) -> None:
    """Raise one SatlabError for the first key of SCHEMA whose value does not fit."""
    for key, rule in SCHEMA.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        if value is _ABSENT or OmegaConf.is_config(value):
            continue
        problem = rule.problem(value)
        if problem:
            why = f" ({rule.note})" if rule.note else ""
            raise SatlabError(f"{key} {problem}{why}, got {value!r}")
