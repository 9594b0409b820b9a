"""Pieces every task shares: where outputs go, building config nodes, the Trainer settings and the model set
(the one way a task gets its models), the evaluation data, and `summary.json` (config, hash, timings, versions)."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from satlab.utils import SatlabError, stable_hash, write_json

_PACKAGES = ("satlab", "torch", "torchvision", "timm", "pytorch-lightning", "hydra-core", "omegaconf",
             "numpy", "scikit-learn", "wandb")


def output_dir(cfg: DictConfig) -> Path:
    """The run's output folder (Hydra's run dir unless `paths.output_dir` is overridden); created if missing."""
    path = Path(str(cfg.paths.output_dir))
    path.mkdir(parents=True, exist_ok=True)
    return path


def build(cfg: DictConfig, group: str) -> Any:
    """Instantiate the `_target_` node `cfg.<group>`, turning the user's mistakes into one SatlabError."""
    node = cfg[group]
    for key in node:
        if OmegaConf.is_missing(node, key):
            raise SatlabError(f"{group}.{key} is required for {group}={node.get('name', '?')}: add {group}.{key}=...")
    try:
        return instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, SatlabError):
            raise err.__cause__ from None
        raise SatlabError(f"{group}: {str(err.__cause__ or err).splitlines()[0]}") from None
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
    return data


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
