"""wandb at the edge. Every call is guarded: a wandb failure is logged as a warning and never loses result files.

`logger=wandb` (default) runs offline, writing under the run dir's `wandb/`; `wandb sync` uploads it later.
`logger=none` turns tracking off.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class Tracker:
    """A thin, failure-tolerant wrapper around one wandb run (or nothing, when `run` is None)."""

    def __init__(self, run: Any = None) -> None:
        self.run = run

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must never break a run
            log.warning("wandb: could not %s (%s); the result files are unaffected", what, err)

    def log(self, metrics: dict[str, Any]) -> None:
        self._guard("log metrics", lambda: self.run.log(metrics))

    def log_table(self, key: str, frame: pd.DataFrame) -> None:
        import wandb

        self._guard(f"log table {key}", lambda: self.run.log({key: wandb.Table(dataframe=frame.reset_index())}))

    def log_image(self, key: str, path: str | os.PathLike) -> None:
        import wandb

        self._guard(f"log image {key}", lambda: self.run.log({key: wandb.Image(str(path))}))

    def log_artifact(self, name: str, kind: str, paths: Iterable[str | os.PathLike]) -> None:
        import wandb

        def _log() -> None:
            artifact = wandb.Artifact(name, type=kind)
            for p in paths:
                if Path(p).is_file():
                    artifact.add_file(str(p))
            self.run.log_artifact(artifact)

        self._guard(f"log artifact {name}", _log)

    def summary(self, values: dict[str, Any]) -> None:
        self._guard("write summary", lambda: self.run.summary.update(values))

    def finish(self) -> None:
        self._guard("finish", lambda: self.run.finish())
        self.run = None


def sweep_context() -> dict[str, Any]:
    """Inside a Hydra multirun job: its sweep folder, job number and overrides; {} for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    hydra_cfg = HydraConfig.get()
    overrides = dict(item.split("=", 1) for item in hydra_cfg.overrides.task if "=" in item)
    return {"dir": str(hydra_cfg.sweep.dir), "job": int(hydra_cfg.job.num), "overrides": overrides}


def wandb_init_args(cfg: DictConfig, job_type: str, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Arguments of `wandb.init` for this task. The jobs of one sweep (or shard array) share a group named
    after the sweep folder, and each job's overrides are config columns (`sweep.overrides`), so a sweep reads
    as one table on the dashboard; `logger.group` wins when set."""
    lcfg = cfg.get("logger") or {}
    config = OmegaConf.to_container(cfg, resolve=True)
    sweep = sweep_context()
    group = lcfg.get("group")
    if sweep:
        config["sweep"] = sweep
        group = group or "sweep:" + "/".join(Path(sweep["dir"]).resolve().parts[-2:])
    return dict(
        project=lcfg.get("project", "satlab"),
        entity=lcfg.get("entity"),
        group=group,
        tags=list(lcfg.get("tags") or []),
        mode=lcfg.get("mode", "offline"),
        dir=str(out_dir),
        job_type=job_type,
        config=config,
        reinit="finish_previous",
    )


def start_tracking(cfg: DictConfig, job_type: str, out_dir: str | os.PathLike) -> Tracker:
    """Start a wandb run for this task as `cfg.logger` says, or a no-op tracker for `logger=none`."""
    lcfg = cfg.get("logger") or {}
    if lcfg.get("name", "none") != "wandb" or lcfg.get("mode") == "disabled":
        return Tracker(None)
    try:
        import wandb

        run = wandb.init(**wandb_init_args(cfg, job_type, out_dir))
    except Exception as err:  # noqa: BLE001
        log.warning("wandb could not start (%s); continuing without tracking", err)
        return Tracker(None)
    return Tracker(run)
