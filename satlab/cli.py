"""The `satlab` command: the only place where Hydra meets the library.

`main` composes the config; `run` checks it (`satlab.tasks.checks`), seeds and dispatches to
`satlab.tasks.<task.name>.run(cfg)` (a task of one's own: `<task.module>.run(cfg)`). Every mistake in the input,
whether Hydra finds it (an unknown group option, a malformed override, a run folder it cannot create) or satlab
does (SatlabError), becomes one line `satlab: error: ...` on stderr and exit status 2. In a sweep (`-m`) a failing
job is reported and the next one runs; the sweep ends with the list of failed jobs and a non-zero status.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from satlab.utils import SatlabError, conf_dir

log = logging.getLogger("satlab")


CONF_DIR = str(conf_dir())  # shipped inside the package (an installed wheel), else the repo's conf/

# A run folder's unique suffix: drawn once per config (cached), copied by Hydra into every job of a sweep.
OmegaConf.register_new_resolver("satlab.uid", lambda: uuid.uuid4().hex[:6], use_cache=True, replace=True)


@dataclass
class _Session:
    """What one `main()` call learns from its jobs: whether a job started, and a sweep's failures."""

    entered: bool = False
    jobs: dict[int, list[str]] = field(default_factory=dict)  # each job's overrides
    failures: list[tuple[int, str, bool]] = field(default_factory=list)  # (job, message, is_user_error)


_SESSION = _Session()


def run(cfg: DictConfig) -> dict:
    """Check the config, then run the task named by `cfg.task.name` and return its summary."""
    from satlab.tasks import get_task
    from satlab.tasks.checks import check_config

    check_config(cfg)
    task = get_task(str(cfg.task.name), OmegaConf.select(cfg, "task.module", default=None))
    os.environ.setdefault("WANDB_SILENT", "true")
    warnings.filterwarnings("ignore", message=".*(LeafSpec|does not have many workers|litlogger).*")
    import pytorch_lightning as pl

    for name in ("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # offline retries: our own error says what to do

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    return task(cfg)


def check_choices() -> None:
    """Group options Hydra lets through: an `optional` default (experiment) with an unknown name is skipped."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    for group, choice in HydraConfig.get().runtime.choices.items():
        if group.startswith("hydra/") or group == "hydra" or choice in (None, "null"):
            continue
        options = loader.get_group_options(group)
        if options and choice not in options:
            raise SatlabError(f"unknown {group} '{choice}'; choose one of: {', '.join(options)}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_entry(cfg: DictConfig) -> None:
    _SESSION.entered = True
    hcfg = HydraConfig.get()
    sweeping = hcfg.mode == RunMode.MULTIRUN
    if sweeping:
        _SESSION.jobs[int(hcfg.job.num)] = list(hcfg.overrides.task)
    try:
        check_choices()
        run(cfg)
    except SatlabError as err:
        print(f"satlab: error: {err}", file=sys.stderr)
        if not sweeping:
            _discard_run_dir(Path(hcfg.runtime.output_dir))
            sys.exit(2)
        _SESSION.failures.append((int(hcfg.job.num), str(err), True))
    except Exception as err:  # noqa: BLE001 - in a sweep, a crash of one job must not stop the others
        if not sweeping:
            raise
        log.exception("job %s crashed", hcfg.job.num)
        _SESSION.failures.append((int(hcfg.job.num), f"{type(err).__name__}: {_one_line(str(err))}", False))


def _one_line(text: str) -> str:
    """Hydra's message as one line, without its config search path."""
    from satlab.schema import one_line

    lines = str(text).splitlines()
    return one_line("\n".join(lines[: next((i for i, ln in enumerate(lines) if ln.strip().startswith(
        "Config search path")), len(lines))]))


def _discard_run_dir(path: Path) -> None:
    """After bad input, remove what Hydra wrote into the run folder (.hydra/, the log); the folder if empty."""
    import shutil

    shutil.rmtree(path / ".hydra", ignore_errors=True)
    for item in path.glob("*.log"):
        item.unlink(missing_ok=True)
    try:
        path.rmdir()
    except OSError:
        pass


def _hydra_message(err: BaseException) -> str:
    """Hydra's (multi-line) message, with its OmegaConf cause, as one line."""
    text = _one_line(str(err))
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException):
        first = _one_line(str(cause).splitlines()[0] if str(cause) else "")
        if first and first not in text:
            text = f"{text} ({first})"
    return text


def _run_dir_message(err: OSError) -> str | None:
    """The one line for an OSError Hydra raised creating the run (or sweep) folder, else None."""
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code)
        tb = tb.tb_next
    where = ("run_job", "launch", "sweep", "_save_config")  # Hydra's functions that create the folders
    if not any(f.co_name in where and f"{os.sep}hydra{os.sep}" in f.co_filename for f in frames):
        return None
    sweeping = any(arg in ("-m", "--multirun") for arg in sys.argv[1:])
    key = "hydra.sweep.dir" if sweeping else "hydra.run.dir"
    path = f" '{err.filename}'" if err.filename else ""
    return f"cannot create the run folder{path} ({err.strerror or err}); set {key}=<a writable folder>"


def _report_sweep() -> int:
    """Print which jobs of a sweep failed; the exit status (0 none, 2 bad input only, 1 a crash)."""
    failures = sorted(_SESSION.failures)
    if not failures:
        return 0
    shared = set.intersection(*(set(job) for job in _SESSION.jobs.values())) if _SESSION.jobs else set()
    print(f"satlab: sweep: {len(failures)} of {len(_SESSION.jobs)} job(s) failed:", file=sys.stderr)
    for num, message, _ in failures:
        own = [o for o in _SESSION.jobs.get(num, []) if o not in shared]
        print(f"  job {num} [{' '.join(own)}]: {message}", file=sys.stderr)
    return 2 if all(user for _, _, user in failures) else 1


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`satlab ...`); `argv` replaces the command-line arguments (for tests)."""
    global _SESSION
    _SESSION = _Session()
    if argv is not None:
        sys.argv = [sys.argv[0] if sys.argv else "satlab", *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing; its config errors become one line
    try:
        _hydra_entry()
    except (HydraException, OmegaConfBaseException) as err:
        if _SESSION.entered:
            raise
        print(f"satlab: error: {_hydra_message(err)}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # Hydra could not create the run folder (before any job started)
        message = None if _SESSION.entered else _run_dir_message(err)
        if message is None:
            raise
        print(f"satlab: error: {message}", file=sys.stderr)
        sys.exit(2)
    status = _report_sweep()
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
