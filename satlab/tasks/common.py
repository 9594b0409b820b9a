"""Pieces every task shares: where outputs go, building config nodes, the Trainer settings and the model set
(the one way a task gets its models), the evaluation data, and `summary.json` (config, hash, timings, versions)."""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from satlab.schema import Key, fail, one_line
from satlab.utils import SatlabError, check_free_space, check_writable_dir, stable_hash, write_json

log = logging.getLogger(__name__)

_PACKAGES = ("satlab", "torch", "torchvision", "timm", "pytorch-lightning", "hydra-core", "omegaconf",
             "numpy", "scikit-learn", "wandb")


RESULTS_ROOM = 2**20  # the least free space a run's folder needs for its results (tables, figures, summary)


def output_dir(cfg: DictConfig) -> Path:
    """The run's output folder (Hydra's run dir unless `paths.output_dir` is overridden); created if missing, else
    one SatlabError (a file, a place that cannot be written, an empty value)."""
    raw = str(cfg.paths.output_dir)
    fail("paths.output_dir", raw, Key("path", note="is a shell variable unset? left out, it is the run folder"))
    folder = check_writable_dir(raw, "paths.output_dir")
    check_free_space(folder, RESULTS_ROOM, "the run's results", "paths.output_dir")  # before the work, not after
    return folder


def build(cfg: DictConfig, group: str) -> Any:
    """Instantiate the `_target_` node `cfg.<group>`, turning the user's mistakes into one SatlabError: what the
    target raises as SatlabError, a `_target_` that cannot be found, arguments it does not take. Any other
    exception raised inside the target stays an exception (a traceback), so a bug is never shown as bad input."""
    node = cfg[group]
    for key in node:
        if OmegaConf.is_missing(node, key):
            raise SatlabError(f"{group}.{key} is required for {group}={node.get('name', '?')}: add {group}.{key}=...")
    try:
        return instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, SatlabError):
            raise cause from None
        trace = getattr(cause, "__traceback__", None)
        if cause is None or isinstance(cause, ImportError) or (trace is not None and trace.tb_next is None):
            # the config's fault: a _target_ that cannot be found, arguments its signature does not take
            raise SatlabError(f"{group}: {one_line(str(cause or err))}") from None
        raise cause from None  # raised inside the target: a bug (or a data problem its code should have named), not bad input
    except MissingMandatoryValue as err:
        raise SatlabError(f"{group}: {err}".splitlines()[0]) from None


def trainer_config(cfg: DictConfig) -> dict[str, Any]:
    """conf/trainer + conf/callbacks as the one mapping `satlab.lightning.build_trainer` takes."""
    from satlab.lightning import trainer_settings

    return trainer_settings(cfg.trainer, cfg.get("callbacks"))


def eval_data(cfg: DictConfig, attack: Any = None) -> Any:
    """The dataset (`cfg.dataset`), refused when it has no evaluation images or (with `attack`) when the attack's
    budget does not fit its resolution."""
    data = build(cfg, "dataset")
    if len(data.eval) == 0:
        raise SatlabError(f"dataset '{data.name}' has no evaluation images")
    if attack is not None:
        attack.check_resolution(data.resolution)
    if note := short_classes(data, OmegaConf.select(cfg, "dataset.samples_per_class", default=None)):
        log.warning("%s", note)
        data.notes.append(note)
    return data


def short_classes(data: Any, asked: int | None) -> str | None:
    """What to say when classes have fewer evaluation images than `dataset.samples_per_class` asks (`asked`), so
    the run uses fewer images than the option suggests; None when every class has them all.

    Args:
        data: the dataset (`DatasetSplits`: eval labels, class names).
        asked: dataset.samples_per_class (None: all images, never short).
    """
    from satlab.data import labels_and_ids

    if asked is None:
        return None
    counts = np.bincount(labels_and_ids(data.eval)[0], minlength=data.num_classes)
    short = [(data.class_names[k] if k < len(data.class_names) else str(k), int(n))
             for k, n in enumerate(counts) if n < asked]
    if not short:
        return None
    listed = ", ".join(f"{name} {n}" for name, n in short[:5]) + (f" and {len(short) - 5} more" if len(short) > 5
                                                                  else "")
    return (f"dataset.samples_per_class={asked} but {len(short)} of {len(counts)} class(es) have fewer evaluation "
            f"images ({listed}): the run uses {int(counts.sum())} images, not {asked * len(counts)}; raising "
            "samples_per_class adds none, more images in the dataset do")


def decode_eval(data: Any, cache_dir: str | Path | None, workers: Any = None) -> None:
    """The evaluation images decoded once, in parallel, before any model work (`satlab.data.pixels`), and kept for
    every later pass of the task: in memory, written to `cache_dir` by the engine or prediction pass once the models
    are checked (so that bad input leaves no file; later runs decode nothing), or read from there when a run wrote
    them before. An unreadable image, or no room for them in the cache nor in memory, is one SatlabError here.

    Args:
        data: the task's DatasetSplits (its `eval` split is decoded).
        cache_dir: the cache folder (paths.cache_dir when the task reuses its caches), or None.
        workers: decoding threads (sat.num_workers); None: the cores available.
    """
    from satlab.data import data_fingerprint

    data_fingerprint(data.eval, None if workers is None else int(workers), cache_dir, write=False)


def open_models(cfg: DictConfig, data: Any, names: list[str] | None = None, own_heads: bool = False) -> Any:
    """The task's model set (`satlab.train.open_model_set`): `cfg.model_set` for `data`, checked, none built."""
    from satlab.train import open_model_set

    return open_model_set(cfg.model_set, data, int(cfg.seed), cfg.paths.cache_dir, trainer_config(cfg), names=names,
                          own_heads=own_heads)


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries that determine results."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def command_line() -> str:
    """The command as the user typed it (best effort)."""
    return " ".join(["satlab", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("satlab") else " ".join(sys.argv)


def write_summary(out_dir: Path, cfg: DictConfig, timings: dict[str, float], **extra: Any) -> Path:
    """Write `summary.json`: the resolved config, its hash, timings (s), library versions and task extras."""
    config = OmegaConf.to_container(cfg, resolve=True)
    summary = {
        "task": str(cfg.task.name),
        "command": command_line(),
        "config": config,
        # what determines results: everything but where files go and how the run is tracked
        "config_hash": stable_hash({k: v for k, v in config.items() if k not in ("paths", "logger")}),
        "timings_s": {k: round(float(v), 3) for k, v in timings.items()},
        "versions": versions(),
        **extra,
    }
    return write_json(Path(out_dir) / "summary.json", summary)
