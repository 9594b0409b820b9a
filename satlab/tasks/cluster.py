"""What a sweep on a cluster needs besides Hydra's submitit launcher: job states on a SLURM without accounting,
and where a job runs (its SLURM job id and log files).

Job states. submitit learns whether a SLURM job ended from `sacct`, every few seconds while a sweep waits. On a
cluster without accounting storage (`AccountingStorageType=accounting_storage/none`, small clusters and the
test cluster of tests/slurm_cluster.py) `sacct` fails with "Slurm accounting storage is disabled" on stderr, each
poll printing that line and submitit's warning into the sweep's console, and a job cancelled for good would
never be seen to end. `watch_job_states` makes submitit ask `python -m satlab.tasks.cluster <sacct args>`
instead: sacct's answer when it has one, else the controller's (`squeue --states=all`, which knows jobs until
`MinJobAge` after they end), in sacct's format, silently.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

NO_ACCOUNTING = "accounting storage is disabled"


def watch_job_states() -> None:
    """Make submitit's SLURM jobs take their states from `job_states` (idempotent); nothing when submitit is not
    installed."""
    try:
        from submitit.slurm.slurm import SlurmJob
    except ImportError:
        return
    watcher = SlurmJob.watcher
    if getattr(watcher, "_satlab_states", False):
        return
    sacct = watcher._make_command

    def command() -> list[str] | None:
        found = sacct()
        return None if found is None else [sys.executable, "-m", "satlab.tasks.cluster", *found[1:]]

    watcher._make_command = command  # type: ignore[method-assign]
    watcher._satlab_states = True  # type: ignore[attr-defined]


def quiet_slurm_polls(launcher: Any) -> None:
    """`watch_job_states` when `launcher` (a sweep's `hydra.launcher` node) is Hydra's SLURM launcher."""
    if "SlurmLauncher" in str(launcher.get("_target_", "")):
        watch_job_states()


def job_states(sacct_args: list[str]) -> tuple[str, str, int]:
    """What `sacct <sacct_args>` prints (JobID|State|NodeList lines with a header), or, where SLURM keeps no
    accounting, the same from `squeue`. Returns (stdout, stderr, exit status).

    Args:
        sacct_args: submitit's sacct arguments: `-o JobID,State,NodeList --parsable2 -j <id> [-j <id> ...]`.
    """
    done = subprocess.run(["sacct", *sacct_args], capture_output=True, text=True)
    if done.returncode == 0 or NO_ACCOUNTING not in done.stderr.lower():
        return done.stdout, done.stderr, done.returncode
    ids = [sacct_args[i + 1] for i, arg in enumerate(sacct_args[:-1]) if arg == "-j"]
    queue = subprocess.run(["squeue", "--noheader", "--states=all", "--jobs", ",".join(ids), "--format=%i|%T|%N"],
                           capture_output=True, text=True)
    lines = queue.stdout.splitlines() if queue.returncode == 0 else []  # ids the controller forgot: no line
    return "".join(f"{line}\n" for line in ["JobID|State|NodeList", *lines]), "", 0


def job_place() -> dict[str, Any]:
    """Where this process runs as a job: its SLURM job id (`<array job>_<task>` in an array) and the files of
    its output, from submitit's environment; {} outside a submitit SLURM job."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or not os.environ.get("SUBMITIT_FOLDER"):
        return {}
    try:
        from submitit import JobEnvironment

        env = JobEnvironment()
        return {"slurm_job": str(env.job_id), "host": env.hostname, "log": str(env.paths.stdout),
                "err_log": str(env.paths.stderr)}
    except Exception:  # noqa: BLE001 - a job environment submitit cannot read: the job runs on, unnamed
        return {}


def main(argv: list[str]) -> int:
    out, err, status = job_states(argv)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
