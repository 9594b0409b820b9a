"""The config schema: the type and range of every option satlab reads, checked in one place before any work.

`check_config(cfg)` (called by the CLI before a task starts) raises one SatlabError, `<key>=<value> <what it must
be>`, for the first option that does not fit:

The mechanism (`Key`, `check_keys`) is `satlab.schema`; each stage declares its own rules with it and this module
applies them all:

1. `SCHEMA` (here): one `Key` per dotted option (`*` matches every entry of a mapping, e.g. each catalog model): its
   kind (bool, int, number, choice, a list of ints), bounds (open or closed), whether null is allowed and what it
   means, literal words it also takes (`auto`), and why. Options absent from the composed config (another task's)
   are skipped. Add an option: one line.
2. Training recipes (`satlab.train.recipe.RECIPE`, `check_recipe`) wherever the config holds one: `train.recipe`, `distill.recipe`,
   `model_set.train` and each `model_set.catalog.<name>.train`: typed keys, then a trial build of the optimizer
   (on a dummy parameter), the scheduler and the loss, so `lr=-1`, bad betas or an unknown `_target_` are refused
   up front, with the key path.
3. The attack (`satlab.attacks.gradient.ATTACK`, `check_attack`): built once on trial; `Attack` itself checks its
   fields through `check_attack`, so a budget is validated by one rule for the CLI and the Python API alike. Every budget must
   be > 0.
4. The Trainer: typed keys in SCHEMA, then one trial construction of `pytorch_lightning.Trainer` with the
   configured options (tasks that run Lightning only), so every value Lightning rejects is refused before work.

Tasks keep only the checks that need their inputs (model names against the catalog, a matrix's size, the
dataset's resolution); a task that must stand alone when called from Python checks its own options with
`check_section(cfg, "<task>")`.
"""

from __future__ import annotations

import logging
import os
import typing
import warnings
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from satlab.schema import BOOL, COUNT, FLOOR, NUMBER, SEED, SEED_HIGH, TOLERANCE, WORKERS, Key, check_keys, one_line
from satlab.train.distill import DISTILL
from satlab.train.recipe import check_recipe

_ABSENT = object()
# tasks that build a pytorch_lightning.Trainer (their Trainer options are tried on construction)
LIGHTNING_TASKS = ("sat", "ensemble", "train", "distill", "cross_dataset")


def _too_few_resamples(value: int) -> str | None:
    if 0 < value < 100:
        return "is too few resamples for a 95% CI; use 0 (no CIs) or >= 100"
    return None


# one rule for the image resamples behind a map's 95% CIs (sat_ci.csv, analyze's pair CIs)
CI_RESAMPLES = Key("int", 0, note="image resamples for the 95% CIs; 0: no CIs", extra=_too_few_resamples)


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
    "sat.num_workers": Key("int", 0, nullable=True, null_means="the cores available",
                           note="threads of the one decode pass; loader workers where they help"),
    "sat.resume": BOOL,
    "sat.print_table": BOOL,
    "sat.n_bootstrap": CI_RESAMPLES,
    "sat.assemble": BOOL,
    "sat.status": BOOL,
    "sat.store_adversarial": BOOL,
    "sat.precision": Key("number", 0, open_low=True, nullable=True, null_means="every pair on every image",
                         note="the 95% half-width of each pair's SAT in ln units, e.g. 0.15"),
    "sat.first_round": Key("int", 1, note="images of the first round of a map at a stated precision (then doubling)"),
    # task=analyze (analyze.n_clusters and analyze.test_size are checked against the matrix's size)
    "analyze.seed": SEED,
    "analyze.symmetric_tol": TOLERANCE,
    "analyze.eps_s": replace(FLOOR, nullable=True, null_means="the sat run's"),
    "analyze.n_bootstrap": CI_RESAMPLES,
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
    "distill.seeds": Key("ints", 0, SEED_HIGH, distinct=True, min_items=1),
    **{f"distill.{key}": rule for key, rule in DISTILL.items()},  # alpha, temperature, mode
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
    "model_set.uncatalogued": Key("choice", choices="satlab.models.specs:UNCATALOGUED"),
    "model_set.input_size": Key("int", 1, nullable=True, null_means="timm's data config", words=("dataset",)),
    "model_set.catalog.*.pretrained": BOOL,
    "model_set.catalog.*.train_seed": Key("int", 0, SEED_HIGH, nullable=True, null_means="not a zoo model"),
    "model_set.catalog.*.input_size": Key("int", 1, nullable=True, null_means="the model set's",
                                          words=("dataset",)),
    # datasets (resize >= resolution and the split names are checked by the dataset)
    "dataset.resolution": COUNT,
    "dataset.resize": COUNT,
    "dataset.samples_per_class": Key("int", 1, nullable=True, null_means="all images"),
    "dataset.subset_seed": SEED,
    "dataset.eval_noise": Key("number", 0, 1, note="std of the pixel noise on the eval images"),
    "dataset.seed": SEED,
    "dataset.train_per_class": Key("int", 0, nullable=True, null_means="the whole train split"),
    "dataset.download": Key("bool", note="true lets torchvision download missing files into dataset.root"),
    "dataset.test_per_class": COUNT,
    "logger.mode": Key("choice", choices=("offline", "online", "disabled")),
    "paths.cache_dir": Key("path", note="is a shell variable unset? the default is $SATLAB_CACHE_DIR, else "
                                        "~/.cache/satlab"),
}

# where recipes sit; model_set.catalog.<name>.train holds a model's overrides of model_set.train
RECIPE_PLACES = ("train.recipe", "distill.recipe", "model_set.train")

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


# --- attacks ------------------------------------------------------------------------------------------------


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

TRAINER_NOT_TRIED = ("_partial_", "callbacks", "logger", "max_epochs")


def check_trainer(trainer_cfg: Any) -> None:
    """Build the Trainer once with the configured options (`satlab.lightning.build_trainer`, the one place a Trainer
    is built; less callbacks, logger and max_epochs): whatever Lightning rejects becomes `trainer: <its message>`.
    Silent, writes nothing, and puts back the global torch flags the construction sets (deterministic
    algorithms, cudnn.benchmark)."""
    import torch

    from satlab.lightning import build_trainer

    options = OmegaConf.to_container(trainer_cfg, resolve=True) if OmegaConf.is_config(trainer_cfg) else trainer_cfg
    options = {k: v for k, v in dict(options or {}).items() if k not in TRAINER_NOT_TRIED}
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    try:
        with _quiet("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning.pytorch",
                    "lightning_fabric", "lightning.fabric"):
            build_trainer(options, callbacks=[])
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.benchmark = flags[2]
        if flags[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = flags[3]
