"""The `satlab` command: the only place where Hydra meets the library.

`main` composes the config; `run` checks it (`satlab.tasks.checks`), seeds and dispatches to
`satlab.tasks.<task.name>.run(cfg)` (a task of one's own: `<task.module>.run(cfg)`). Every mistake in the input,
whether Hydra finds it (an unknown group option, a malformed override, a run folder it cannot create) or satlab
does (SatlabError), becomes one line `satlab: error: ...` on stderr and exit status 2. In a sweep (`-m`) a failing
job is reported and the next one runs; every job that ends records its status in its folder and rebuilds the
sweep's overview table (`satlab.tasks.sweep`); the sweep ends with the table's path, the list of failed jobs and a
non-zero status.

Python warnings raised during a command are shown as one plain log line each (no source line), or not at all
when they tell the user nothing they can act on (`QUIET_WARNINGS`, and deprecation notices of the libraries).
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
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from satlab.cli_messages import hydra_message, hydra_text, launch_message, run_dir_message, yaml_message
from satlab.utils import SatlabError, conf_dir

log = logging.getLogger("satlab")


CONF_DIR = str(conf_dir())  # shipped inside the package (an installed wheel), else the repo's conf/

# A run folder's unique suffix: drawn once per config (cached), copied by Hydra into every job of a sweep.
OmegaConf.register_new_resolver("satlab.uid", lambda: uuid.uuid4().hex[:6], use_cache=True, replace=True)


# Library warnings a user cannot act on: dropped. Matched against the warning's message.
QUIET_WARNINGS = (
    r"LeafSpec",  # pytorch_lightning's own use of a deprecated torch API
    r"does not have many workers",  # small in-memory datasets: worker processes would be slower
    r"litlogger|litmodels",  # Lightning's advertisements
    r"module\(s\) in eval mode at the start of training",  # frozen teachers (distillation) are meant to be
    r"is smaller than the logging interval",  # Lightning's step logging; satlab logs per epoch
    r"The `srun` command is available on your system but is not used",  # Lightning's hint where SLURM is
    # installed: a satlab job is one process (several devices: forked ranks), srun adds nothing (scale-out.md)
)


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
    warnings.filterwarnings("ignore", message=f".*({'|'.join(QUIET_WARNINGS)}).*")
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


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """`warnings.showwarning` for the command: one plain log line, without the source line Python prints.

    Deprecation notices raised outside satlab (the libraries' business) go to the debug log only.

    Args:
        message, category: the warning and its class.
        filename, lineno: where it was raised (kept for the debug log only).
        file, line: unused (Python's signature).
    """
    text = hydra_text(str(message))
    outside = not str(filename).startswith(str(Path(__file__).resolve().parent))
    if outside and issubclass(category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
        log.debug("%s (%s:%s)", text, filename, lineno)
    else:
        log.warning("%s", text)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_entry(cfg: DictConfig) -> None:
    """One run or sweep job (in this process, or in a submitit job's): its warnings as plain log lines."""
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        _job(cfg)
    finally:
        warnings.showwarning = shown


def _job(cfg: DictConfig) -> None:
    """Run the task; in a sweep, record how the job ended and rebuild the sweep's overview."""
    _SESSION.entered = True
    hcfg = HydraConfig.get()
    sweeping = hcfg.mode == RunMode.MULTIRUN
    job_dir = Path(hcfg.runtime.output_dir)
    if sweeping:
        _SESSION.jobs[int(hcfg.job.num)] = list(hcfg.overrides.task)
        _job_status(job_dir, None)
    status, message = "ok", ""
    try:
        check_choices()
        run(cfg)
    except SatlabError as err:
        print(f"satlab: error: {err}", file=sys.stderr)
        if not sweeping:
            _discard_run_dir(job_dir)
            sys.exit(2)
        status, message = "bad input", str(err)
        _SESSION.failures.append((int(hcfg.job.num), message, True))
    except Exception as err:  # noqa: BLE001 - in a sweep, a crash of one job must not stop the others
        if not sweeping:
            raise
        log.exception("job %s crashed", hcfg.job.num)
        status, message = "crashed", f"{type(err).__name__}: {hydra_text(str(err))}"
        _SESSION.failures.append((int(hcfg.job.num), message, False))
    if sweeping:
        _job_status(job_dir, (int(hcfg.job.num), status, message))
        _update_overview(Path(str(hcfg.sweep.dir)))


def _job_status(job_dir: Path, ended: tuple[int, str, str] | None) -> None:
    """Clear a sweep job's status file (`ended` None: the job starts) or write it (`ended`: number, status,
    message); a file that cannot be written is logged, the sweep goes on."""
    from satlab.tasks.sweep import clear_job_status, write_job_status

    try:
        clear_job_status(job_dir) if ended is None else write_job_status(job_dir, *ended)
    except OSError as err:
        log.warning("cannot record the job's status in %s (%s)", job_dir, err)


def _update_overview(sweep_dir: Path) -> Path | None:
    """Rebuild the sweep's overview table; its Markdown path, or None (logged) when it cannot be written."""
    from satlab.tasks.sweep import write_overview

    try:
        return write_overview(sweep_dir)[1]
    except OSError as err:
        log.warning("cannot write the sweep overview in %s (%s)", sweep_dir, err)
        return None


def _discard_run_dir(path: Path) -> None:
    """After bad input, remove what Hydra wrote into the run folder (.hydra/, the log); the folder if empty. The log
    handlers that write there are closed and detached first, so a later run in this process (tests, notebooks)
    never logs into a folder that is gone."""
    import shutil

    for logger in (logging.getLogger(), *(lg for lg in logging.root.manager.loggerDict.values()
                                          if isinstance(lg, logging.Logger))):
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve().parent == path.resolve():
                handler.close()
                logger.removeHandler(handler)
    shutil.rmtree(path / ".hydra", ignore_errors=True)
    for item in path.glob("*.log"):
        item.unlink(missing_ok=True)
    try:
        path.rmdir()
    except OSError:
        pass


def _launch_failed(err: BaseException) -> None:
    """When submitit could not hand a sweep to SLURM before any job ran: remove what the launch wrote into the
    sweep folder (submitit's pickles and sbatch scripts; multirun.yaml and the folder when nothing else is there),
    print the one line and exit with status 2. Otherwise return (the caller raises)."""
    message = None if _SESSION.entered else launch_message(err)
    if message is None:
        return
    from satlab.tasks.sweep import SweepCallback

    sweep = SweepCallback.started
    if sweep is not None and sweep.is_dir():
        submitit = sweep / ".submitit"
        for item in submitit.iterdir() if submitit.is_dir() else []:
            if item.is_file():  # this launch's files; the folders of jobs submitted earlier stay
                item.unlink()
        if submitit.is_dir() and not any(submitit.iterdir()):
            submitit.rmdir()
        if [p.name for p in sweep.iterdir()] == ["multirun.yaml"]:
            (sweep / "multirun.yaml").unlink()
            sweep.rmdir()
    print(f"satlab: error: {message}", file=sys.stderr)
    sys.exit(2)


def _job_without_result(err: BaseException) -> None:
    """A submitit job that ended without a result (cancelled, killed): the overview, one line, exit status 1.
    Otherwise return (the caller raises)."""
    from satlab.tasks.sweep import SweepCallback

    if type(err).__name__ != "UncompletedJobError" or SweepCallback.started is None:
        return
    _finish_sweep()
    lines = str(err).splitlines()
    print(f"satlab: sweep: {hydra_text(' '.join(lines[:2]))}; the sweep stops waiting here (jobs still running "
          "write the overview when they end); for a tiled map, the same command with sat.status=true instead "
          "of sat.tile shows which tiles are done (docs/scale-out.md)", file=sys.stderr)
    sys.exit(1)


def _finish_sweep() -> int:
    """At the end of a sweep: rebuild its overview, print where it is and which jobs failed; the exit status (0
    none failed, 2 bad input only, 1 a crash). Jobs that ran in other processes are read from their folders."""
    from satlab.tasks.sweep import SweepCallback, ended_jobs

    sweep_dir = SweepCallback.started
    if sweep_dir is None:  # no sweep
        return 0
    table = _update_overview(sweep_dir)
    if table is not None:
        print(f"sweep overview: {table} (and {table.with_suffix('.csv').name} beside it)")
    if _SESSION.jobs:
        return _report_sweep(_SESSION.jobs, sorted(_SESSION.failures))
    return _report_sweep(*ended_jobs(sweep_dir))  # the jobs ran elsewhere (submitit): their folders say how


def _report_sweep(jobs: dict[int, list[str]], failures: list[tuple[int, str, bool]]) -> int:
    """Print which jobs of a sweep failed, with the overrides that set each apart; the exit status (0 none,
    2 bad input only, 1 a crash).

    Args:
        jobs: each job's overrides, by job number.
        failures: (job, message, is bad input) of each failed job.
    """
    if not failures:
        return 0
    shared = set.intersection(*(set(job) for job in jobs.values())) if jobs else set()
    print(f"satlab: sweep: {len(failures)} of {len(jobs)} job(s) failed:", file=sys.stderr)
    for num, message, _ in failures:
        own = [o for o in jobs.get(num, []) if o not in shared]
        print(f"  job {num} [{' '.join(own)}]: {message}", file=sys.stderr)
    return 2 if all(user for _, _, user in failures) else 1


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`satlab ...`); `argv` replaces the command-line arguments (for tests)."""
    global _SESSION
    from satlab.tasks.sweep import SweepCallback

    _SESSION = _Session()
    SweepCallback.started = None
    if argv is not None:
        sys.argv = [sys.argv[0] if sys.argv else "satlab", *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing; its config errors become one line
    try:
        _hydra_entry()
    except (HydraException, OmegaConfBaseException) as err:
        if _SESSION.entered:
            raise
        print(f"satlab: error: {hydra_message(err)}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # no sbatch, or Hydra could not create the run folder (before any job started)
        _launch_failed(err)
        message = None if _SESSION.entered else run_dir_message(err)
        if message is None:
            raise
        print(f"satlab: error: {message}", file=sys.stderr)
        sys.exit(2)
    except yaml.YAMLError as err:  # a config file of one's own (--config-dir) that is not valid YAML
        if _SESSION.entered:
            raise
        print(f"satlab: error: {yaml_message(err)}", file=sys.stderr)
        sys.exit(2)
    except ValueError as err:  # Hydra's flags that exclude each other (-m with --cfg, ...)
        if _SESSION.entered or not str(err).startswith("Only one of"):
            raise
        print(f"satlab: error: {hydra_text(str(err))}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as err:  # submitit: no SLURM to take the sweep (exit 2), a job ended without a result (1)
        _job_without_result(err)
        _launch_failed(err)
        raise
    status = _finish_sweep()
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
