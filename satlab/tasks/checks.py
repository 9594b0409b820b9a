"""The config schema: the type and range of every option satlab reads, checked in one place before any work.

`check_config(cfg)` (called by the CLI before a task starts) raises one SatlabError, `<key>=<value> <what it must
be>`, for the first option that does not fit:

1. `SCHEMA`: one `Key` per dotted option (`*` matches every entry of a mapping, e.g. each catalog model): its
   kind (bool, int, number, choice, a list of ints), bounds (open or closed), whether null is allowed and what it
   means, literal words it also takes (`auto`), and why. Options absent from the composed config (another task's)
   are skipped. Add an option: one line.
2. Training recipes (`RECIPE`, `check_recipe`) wherever the config holds one: `train.recipe`, `distill.recipe`,
   `model_set.train` and each `model_set.catalog.<name>.train`: typed keys, then a trial build of the optimizer
   (on a dummy parameter), the scheduler and the loss, so `lr=-1`, bad betas or an unknown `_target_` are refused
   up front, with the key path.
3. The attack (`ATTACK`, `check_attack`): built once on trial; `Attack` itself checks its fields through
   `check_attack`, so a budget is validated by one rule for the CLI and the Python API alike. Every budget must
   be > 0.
4. The Trainer: typed keys in SCHEMA, then one trial construction of `pytorch_lightning.Trainer` with the
   configured options (tasks that run Lightning only), so every value Lightning rejects is refused before work.

Tasks keep only the checks that need their inputs (model names against the catalog, a matrix's size, the
dataset's resolution); a task that must stand alone when called from Python checks its own options with
`check_section(cfg, "<task>")`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import math
import os
import typing
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from omegaconf import DictConfig, OmegaConf

from satlab.utils import SatlabError

_ABSENT = object()
_SEED_HIGH = 2**32 - 1  # numpy and torch take seeds in [0, 2^32-1]
# tasks that build a pytorch_lightning.Trainer (their Trainer options are tried on construction)
LIGHTNING_TASKS = ("sat", "ensemble", "train", "distill", "cross_dataset")


def one_line(text: str) -> str:
    """A (multi-line) message as one line: non-empty lines joined by '; '."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return "; ".join(lines).replace(":; ", ": ").replace(".; ", "; ")


def shown(value: Any) -> str:
    """`value` as written on the command line: true/false/null, [a, b]; a string that reads as something else
    (a number, a boolean, nothing) in quotes."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    if isinstance(value, str):
        try:
            float(value)
            looks_other = True
        except ValueError:
            looks_other = value.strip().lower() in ("", "true", "false", "null", "none")
        return repr(value) if looks_other else value
    return repr(value) if isinstance(value, float) else str(value)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


@dataclass(frozen=True)
class Key:
    """What one option may hold.

    kind: bool, int, number (finite int or float), choice (one of `choices`) or ints (a list of integers).
    low/high: bounds of numbers (and of each item of ints), excluded when `open_low`/`open_high`.
    nullable: null is allowed; `null_means` says what it does. words: literal strings also accepted ("auto").
    choices: a tuple; or "module:NAME", a tuple defined in code, or a function returning one (read only when the
    option is checked, so that importing the schema imports neither Lightning nor the analysis code).
    distinct/min_items: for ints. note: why the rule holds, shown after it. extra: a further rule on a value that
    fits (the whole phrase after `key=value`, or None).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    nullable: bool = False
    null_means: str = ""
    words: tuple = ()
    choices: tuple | str | Callable[[], tuple] = ()
    distinct: bool = False
    min_items: int = 0
    note: str = ""
    extra: Callable[[Any], str | None] | None = None

    def known(self) -> tuple:
        """The choices (read from code when given as "module:NAME" or a function)."""
        if callable(self.choices):
            return tuple(self.choices())
        if isinstance(self.choices, str):
            module, name = self.choices.split(":")
            return tuple(getattr(importlib.import_module(module), name))
        return self.choices

    def problem(self, value: Any) -> str | None:
        """None if `value` fits, else what is wrong with it (the phrase after `key=value`)."""
        if value is None and self.nullable:
            return None
        if isinstance(value, str) and value in self.words:
            return None
        if self.kind == "choice":
            known = [str(c) for c in self.known()]  # 32 and "32" are the same precision
            if value is not None and str(value) in known and not isinstance(value, bool):
                return None
            close = difflib.get_close_matches(str(value), known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            alts = ", ".join([*(["null"] if self.nullable else []), *self.words, *known])
            return f"is unknown; choose one of {alts}{self._why()}{hint}"
        if not self._fits(value):
            return f"must be {self.expected()}{self._why()}"
        return self.extra(value) if self.extra else None

    def _fits(self, value: Any) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "int":
            return _is_int(value) and self._in_range(value)
        if self.kind == "number":
            return _is_number(value) and self._in_range(value)
        if self.kind == "ints":
            return (isinstance(value, (list, tuple)) and len(value) >= self.min_items
                    and all(_is_int(v) and self._in_range(v) for v in value)
                    and (not self.distinct or len(set(value)) == len(value)))
        raise ValueError(f"unknown kind {self.kind!r}")

    def _in_range(self, value: float) -> bool:
        low_ok = self.low is None or (value > self.low if self.open_low else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return low_ok and high_ok

    def _range(self) -> str:
        if self.low is not None and self.high is not None:
            return (f" in {'(' if self.open_low else '['}{_num(self.low)}, {_num(self.high)}"
                    f"{')' if self.open_high else ']'}")
        if self.low is not None:
            return f" {'>' if self.open_low else '>='} {_num(self.low)}"
        if self.high is not None:
            return f" {'<' if self.open_high else '<='} {_num(self.high)}"
        return ""

    def expected(self) -> str:
        """What the option must be, e.g. 'null (the recipe's) or an integer >= 1'."""
        null = [f"null ({self.null_means})" if self.null_means else "null"] if self.nullable else []
        if self.kind == "bool":
            options = ["true", "false", *self.words, *null]
        else:
            what = {"int": "an integer", "number": "a number"}.get(self.kind)
            if self.kind == "ints":
                least = {0: "a list of ", 1: "a non-empty list of "}.get(self.min_items, f"a list of at least "
                                                                            f"{self.min_items} ")
                what = f"{least}{'distinct ' if self.distinct else ''}integers"
            options = [*null, *self.words, f"{what}{self._range()}"]
        return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"

    def _why(self) -> str:
        return f" ({self.note})" if self.note else ""


def _too_few_resamples(value: int) -> str | None:
    if 0 < value < 100:
        return "is too few resamples for a 95% CI; use 0 (no CIs) or >= 100"
    return None


NUMBER = Key("number")
BOOL = Key("bool")
SEED = Key("int", 0, _SEED_HIGH)
COUNT = Key("int", 1)  # a positive count
WORKERS = Key("int", 0, note="DataLoader worker processes; 0: load in the main process")
FLOOR = Key("number", 0, open_low=True, note="it floors the argument of the log")
TOLERANCE = Key("number", 0)


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


SCHEMA: dict[str, Key] = {
    "seed": SEED,
    # task=sat
    "sat.eps_s": FLOOR,
    "sat.batch_size": COUNT,
    "sat.num_workers": WORKERS,
    "sat.resume": BOOL,
    "sat.print_table": BOOL,
    "sat.n_bootstrap": Key("int", 0, note="resamples for sat_ci.csv; 0: no CIs"),
    "sat.assemble": BOOL,
    "sat.store_adversarial": BOOL,
    # task=analyze (analyze.n_clusters and analyze.test_size are checked against the matrix's size)
    "analyze.seed": SEED,
    "analyze.symmetric_tol": TOLERANCE,
    "analyze.eps_s": Key("number", 0, 100, open_low=True, open_high=True, nullable=True, null_means="the sat run's",
                         note="a rate in %"),
    "analyze.n_bootstrap": Key("int", 0, note="0: no CIs", extra=_too_few_resamples),
    "analyze.importance_model": Key("choice", choices="satlab.analysis.importance:MODELS"),
    "analyze.importance_seeds": COUNT,
    "analyze.test_size": NUMBER,
    "analyze.n_repeats": COUNT,
    "analyze.n_estimators": COUNT,
    "analyze.n_clusters": Key("int", nullable=True, null_means="the eigengap decides"),
    "analyze.max_clusters": Key("int", 2, note="the eigengap searches 2 .. max_clusters clusters"),
    "analyze.affinity": Key("choice", choices="satlab.analysis.clustering:AFFINITIES"),
    "analyze.map": Key("choice", choices="satlab.analysis.clustering:MAPS"),
    "analyze.top_pairs": COUNT,
    # task=compare
    "compare.n_permutations": COUNT,
    "compare.seed": SEED,
    "compare.n_clusters": Key("int", 2, nullable=True, null_means="each matrix's eigengap decides"),
    # task=ensemble (team sizes and strategies are checked against the number of models)
    "ensemble.combine": Key("choice", choices="satlab.ensemble.combine:COMBINE_RULES"),
    "ensemble.compute_sat": BOOL,
    "ensemble.random_teams": COUNT,
    "ensemble.n_bootstrap": COUNT,
    "ensemble.n_permutations": Key("int", 0),
    "ensemble.ci_level": Key("number", 0, 1, open_low=True, open_high=True),
    "ensemble.calibration_bins": COUNT,
    "ensemble.seed": SEED,
    "ensemble.symmetric_tol": TOLERANCE,
    "ensemble.eps_s": FLOOR,
    "ensemble.batch_size": COUNT,
    "ensemble.num_workers": WORKERS,
    "ensemble.resume": BOOL,
    # task=train (train.recipe: RECIPE)
    "train.mode": Key("choice", choices=("full", "head"), note="head = linear probe"),
    "train.seed": SEED,
    # task=distill (distill.recipe: RECIPE)
    "distill.seeds": Key("ints", 0, _SEED_HIGH, distinct=True, min_items=1),
    "distill.alpha": Key("number", 0, 1, note="the weight of the teacher term"),
    "distill.temperature": Key("number", 0, open_low=True, note="it divides the logits"),
    "distill.mode": Key("choice", choices=("soft", "hard")),
    "distill.reference_seed": SEED,
    "distill.eps_s": FLOOR,
    "distill.sat_batch_size": COUNT,
    "distill.n_boot": Key("int", 0, note="bootstrap resamples for the CI of Spearman's rho; 0: none"),
    # the Trainer (Lightning checks the rest when it is constructed: devices, strategy, val_check_interval, ...)
    "trainer.accelerator": Key("choice", choices=_accelerators),
    "trainer.precision": Key("choice", choices=_precisions),
    "trainer.enable_progress_bar": BOOL,
    "trainer.max_epochs": Key("int", 1, nullable=True, null_means="each model's recipe"),
    "trainer.min_epochs": Key("int", 0, nullable=True),
    "trainer.num_nodes": COUNT,
    "trainer.accumulate_grad_batches": COUNT,
    "trainer.gradient_clip_val": Key("number", 0, nullable=True, null_means="no clipping"),
    "trainer.log_every_n_steps": Key("int", 1, nullable=True),
    "trainer.check_val_every_n_epoch": Key("int", 1, nullable=True),
    "trainer.num_sanity_val_steps": Key("int", -1, nullable=True, note="-1: all"),
    "trainer.reload_dataloaders_every_n_epochs": Key("int", 0),
    "trainer.deterministic": Key("bool", nullable=True, words=("warn",)),
    "trainer.benchmark": Key("bool", nullable=True),
    "trainer.detect_anomaly": BOOL,
    "trainer.enable_checkpointing": Key("bool", nullable=True),
    "trainer.enable_model_summary": Key("bool", nullable=True),
    "trainer.inference_mode": BOOL,
    "trainer.sync_batchnorm": BOOL,
    "trainer.use_distributed_sampler": BOOL,
    "trainer.barebones": BOOL,
    # model sets
    "model_set.pretrained": BOOL,
    "model_set.uncatalogued": Key("choice", choices=("refuse", "random", "pretrained")),
    "model_set.input_size": Key("int", 1, nullable=True, null_means="timm's data config", words=("dataset",)),
    "model_set.catalog.*.pretrained": BOOL,
    "model_set.catalog.*.train_seed": Key("int", 0, _SEED_HIGH, nullable=True, null_means="not a zoo model"),
    "model_set.catalog.*.input_size": Key("int", 1, nullable=True, null_means="the model set's",
                                          words=("dataset",)),
    # datasets (resize >= resolution and the split names are checked by the dataset)
    "dataset.resolution": COUNT,
    "dataset.resize": COUNT,
    "dataset.samples_per_class": Key("int", 1, nullable=True, null_means="all images"),
    "dataset.subset_seed": SEED,
    "dataset.eval_noise": Key("number", 0, 1, note="std of the pixel noise on the eval images"),
    "dataset.seed": SEED,
    "dataset.train_per_class": Key("int", 0),
    "dataset.test_per_class": COUNT,
    "logger.mode": Key("choice", choices=("offline", "online", "disabled")),
}

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
# where recipes sit; model_set.catalog.<name>.train holds a model's overrides of model_set.train
RECIPE_PLACES = ("train.recipe", "distill.recipe", "model_set.train")

# An attack's fields (satlab.attacks.Attack); its budget `eps` depends on the norm.
ATTACK: dict[str, Key] = {
    "norm": Key("choice", choices="satlab.attacks.gradient:NORMS"),
    "loss": Key("choice", choices="satlab.attacks.gradient:LOSSES"),
    "steps": COUNT,
    "step_size": Key("number", 0, open_low=True, nullable=True, null_means="eps/4"),
    "momentum": Key("number", 0),
    "random_start": BOOL,
    "quantize": BOOL,
}
ATTACK_EPS: dict[str, Key] = {
    "linf": Key("number", 0, 1, open_low=True, note="L-inf, in pixel units: 8/255 = 0.0314"),
    "l2": Key("number", 0, open_low=True, note="the L2 norm over all 3xHxW values, in [0,1] pixel units"),
}


def _fail(key: str, value: Any, rule: Key) -> None:
    problem = rule.problem(value)
    if problem:
        raise SatlabError(f"{key}={shown(value)} {problem}")


def _select(cfg: Any, key: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every option matching `key` (`*`: each entry of a mapping); absent ones skipped."""
    head, star, rest = key.partition(".*.")
    if star:
        node = OmegaConf.select(cfg, head, default=None, throw_on_missing=False)
        if OmegaConf.is_dict(node):
            for name in node:
                if OmegaConf.is_dict(node[name]):
                    for sub, value in _select(node[name], rest):
                        yield f"{head}.{name}.{sub}", value
        return
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None, throw_on_missing=False) if parent else cfg
    if not OmegaConf.is_dict(node) or leaf not in node or OmegaConf.is_missing(node, leaf):
        return
    value = node[leaf]
    yield key, (OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value)


def check_keys(cfg: Any, schema: Mapping[str, Key], prefix: str = "") -> None:
    """Raise one SatlabError for the first option of `schema` (dotted keys under `cfg`) that does not fit;
    `prefix` is prepended to the keys in the message."""
    for key, rule in schema.items():
        for name, value in _select(cfg, key):
            _fail(f"{prefix}{name}", value, rule)


def check_section(cfg: DictConfig, section: str) -> None:
    """Check the SCHEMA options under `section` (e.g. "analyze"): for a task called without `check_config`."""
    check_keys(cfg, {k: v for k, v in SCHEMA.items() if k.startswith(f"{section}.")})


def check_config(cfg: DictConfig) -> None:
    """Check the whole config (module docstring); raise one SatlabError for the first problem."""
    check_keys(cfg, SCHEMA)
    check_recipes(cfg)
    if "attack" in cfg:
        check_attack_config(cfg)
    if str(OmegaConf.select(cfg, "task.name", default="")) in LIGHTNING_TASKS and "trainer" in cfg:
        check_trainer(cfg.trainer)


# --- recipes ------------------------------------------------------------------------------------------------


def _reason(err: BaseException) -> str:
    """What went wrong, in one line: the cause Hydra wraps, else the error itself."""
    cause = err.__cause__ or err
    return one_line(str(cause)).rstrip(":") or type(cause).__name__


def check_recipes(cfg: DictConfig) -> None:
    """`check_recipe` on every recipe the config holds, and on each catalog model's overrides."""
    for place in RECIPE_PLACES:
        node = OmegaConf.select(cfg, place, default=None, throw_on_missing=False)
        if node is not None:
            check_recipe(node, place)
    base = OmegaConf.select(cfg, "model_set.train", default=None, throw_on_missing=False)
    catalog = OmegaConf.select(cfg, "model_set.catalog", default=None, throw_on_missing=False)
    if OmegaConf.is_dict(catalog):
        for name, entry in catalog.items():
            if OmegaConf.is_dict(entry) and entry.get("train") is not None:
                check_recipe(entry.train, f"model_set.catalog.{name}.train", base=base)


def check_recipe(node: Any, where: str, base: Any = None) -> None:
    """Check the recipe `node` found at `where` (a dotted key, for messages): known keys, typed values, and a
    trial build of its optimizer (on a dummy parameter), scheduler and loss. `base`: the recipe `node` overrides
    (a catalog model's `train` overrides `model_set.train`); then only the nodes `node` changes are built."""
    from satlab.train.recipe import DEFAULTS, merge

    layer = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    if not isinstance(layer, Mapping):
        raise SatlabError(f"{where}={shown(layer)} must be a mapping of recipe keys ({', '.join(DEFAULTS)})")
    unknown = [k for k in layer if k not in DEFAULTS]
    augment = layer.get("augment")
    if isinstance(augment, Mapping):
        unknown += [f"augment.{k}" for k in augment if f"augment.{k}" not in RECIPE]
    elif "augment" in layer:
        unknown.append("augment")
    if unknown:
        raise SatlabError(f"{where}.{unknown[0]} is not a recipe key; known: {', '.join(DEFAULTS)} (augment: "
                          f"{', '.join(k.split('.')[1] for k in RECIPE if k.startswith('augment.'))})")
    check_keys(OmegaConf.create(layer), RECIPE, prefix=f"{where}.")
    plain_base = OmegaConf.to_container(base, resolve=True) if OmegaConf.is_config(base) else (base or {})
    recipe = merge(merge(DEFAULTS, plain_base), layer)
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


# --- attacks ------------------------------------------------------------------------------------------------


def check_attack(fields: Any) -> None:
    """Check an attack's fields (an object with ATTACK's attributes and `eps`, e.g. an `Attack`)."""
    for name, rule in ATTACK.items():
        _fail(f"attack.{name}", getattr(fields, name), rule)
    _fail("attack.eps", fields.eps, ATTACK_EPS[fields.norm])


@contextmanager
def _quiet(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Loggers `names` raised to `level` and warnings ignored, for a trial build."""
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, old in zip(loggers, before):
            lg.setLevel(old)


def check_attack_config(cfg: DictConfig) -> None:
    """Build `cfg.attack` once on trial, as a task does (its notes, e.g. a snapped budget, are logged then)."""
    from satlab.tasks.common import build

    with _quiet("satlab.attacks", "satlab.attacks.gradient"):
        build(cfg, "attack")


# --- the Trainer --------------------------------------------------------------------------------------------

TRAINER_NOT_TRIED = ("_target_", "_partial_", "callbacks", "logger", "max_epochs")


def check_trainer(trainer_cfg: Any) -> None:
    """Construct `pytorch_lightning.Trainer` once with the configured options (less callbacks, logger and
    max_epochs): whatever Lightning rejects becomes `trainer: <its message>`. Silent, writes nothing, and puts
    back the global torch flags the construction sets (deterministic algorithms, cudnn.benchmark)."""
    import pytorch_lightning as pl
    import torch
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    options = OmegaConf.to_container(trainer_cfg, resolve=True) if OmegaConf.is_config(trainer_cfg) else trainer_cfg
    options = {k: v for k, v in dict(options or {}).items() if k not in TRAINER_NOT_TRIED}
    options.setdefault("enable_checkpointing", False)
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    try:
        with _quiet("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning.pytorch",
                    "lightning_fabric", "lightning.fabric"):
            pl.Trainer(logger=False, **options)
    except (MisconfigurationException, ValueError, TypeError, RuntimeError, ImportError) as err:
        raise SatlabError(f"trainer: {one_line(str(err).splitlines()[0] if str(err) else type(err).__name__)}") \
            from None
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.benchmark = flags[2]
        if flags[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = flags[3]
