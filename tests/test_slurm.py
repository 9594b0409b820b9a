"""Tiles on a real SLURM: a one-node cluster on this machine (tests/slurm_cluster.py: Debian's slurm-wlm 22.05 and
munge, as root; skipped, saying why, without them), driven exactly as docs/scale-out.md tells users:
`satlab -m ... sat.tiles=AxB sat.tile=... hydra/launcher=submitit_slurm`, each sweep one job array.

- an array of tiles + `sat.assemble=true` gives the records and sat_matrix.csv of one process, bit for bit, while
  a job of the array that fails on purpose is reported and shown in the sweep overview;
- a tile requeued (`scontrol requeue`) in the middle of its work resumes from the rows its first attempt wrote:
  none of the sources that attempt finished is attacked again;
- a tile cancelled for good (`scancel`) leaves only whole rows, `sat.assemble=true` names it, `sat.status=true`
  shows it with its SLURM log, and the command the status prints completes the map alone;
- two array tasks that need the same sources at once share them: each source is attacked by one task, the other
  evaluates its stored images.

The sweeps run as the user runs them, in a process of their own (`python -m satlab.cli`); the models are timm's
tiny test architectures (random init), so the maps take seconds. A module-scoped cluster serves every test and
is stopped by PID at the end, its jobs cancelled first.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slurm_cluster  # noqa: E402

from satlab.sat.cache import read_row  # noqa: E402
from satlab.sat.records import load_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["test_resnet", "test_vit", "test_convnext", "test_efficientnet"]
# a PGD attack on 40 images: each source's attack takes a moment, so a job can be caught in the middle of its work
MAP = ["experiment=smoke", "model_set=timm_tiny", "attack=pgd_linf", "attack.steps=10", "dataset.samples_per_class=4",
       "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "sat.print_table=false"]
LAUNCHER = ["hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=15", "hydra.launcher.cpus_per_task=1"]
TIMEOUT = 900  # generous: other tests share the 2 cores


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = slurm_cluster.why_not()
    if reason:
        pytest.skip(reason)
    running = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    try:
        yield running
    finally:
        slurm_cluster.stop(running)


def env(cluster: slurm_cluster.Cluster) -> dict[str, str]:
    return {**cluster.env, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def satlab(cluster, cwd: Path, *args: str) -> subprocess.Popen:
    """`satlab <args>` in a process of its own, in `cwd`, against the cluster (stdout and stderr kept apart)."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "satlab.cli", *args], env=env(cluster), cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    return proc.returncode, out, err


def ran(cluster, cwd: Path, *args: str) -> tuple[int, str, str]:
    return finish(satlab(cluster, cwd, *args))


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the sweep ended (status {proc.returncode}) before {what}: {(err + out)[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def rows(cache: Path, sources: list[str] | None = None) -> list[str]:
    """The sources with a finished row in the cache (atomic writes go through hidden temp files first)."""
    found = [p.name.rsplit("-", 1)[0] for p in (cache / "records").glob("*.npz") if not p.name.startswith(".")]
    return sorted(s for s in found if sources is None or s in sources)


def array_task(cluster, index: int) -> str | None:
    """The id of the running array task `<job>_<index>` (a sweep of one job is a plain job: `<job>`), None while
    it is not running."""
    for line in cluster.run("squeue", "-h", "-t", "R", "-o", "%i").split():
        if line.endswith(f"_{index}") or ("_" not in line and index == 0):
            return line
    return None


def job_info(cluster, job: str) -> str:
    return cluster.run("scontrol", "show", "job", job)


@pytest.fixture(scope="module")
def one_process(cluster, tmp_path_factory):
    """The map computed by one plain process (no tiles, its own cache): what every assembled map must equal."""
    root = tmp_path_factory.mktemp("one")
    code, _, err = ran(cluster, root, *MAP, f"paths.cache_dir={root / 'cache'}", f"paths.output_dir={root / 'out'}")
    assert code == 0, err[-3000:]
    return root / "out"


def assemble_equals(satlab_in_process, cwd: Path, cache: Path, tiles: str, one_process: Path) -> None:
    """`sat.assemble=true` (no SLURM needed: run in this process) gives the one-process map, bit for bit."""
    out = cwd / "assembled"
    done = satlab_in_process([*MAP, f"sat.tiles={tiles}", "sat.assemble=true", f"paths.cache_dir={cache}",
                              f"paths.output_dir={out}"], cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = load_records(out / "records.npz"), load_records(one_process / "records.npz")
    for key in ("models", "sample_ids", "labels", "correct", "fooled"):
        assert np.array_equal(np.asarray(getattr(a, key)), np.asarray(getattr(b, key))), key
    assert (out / "sat_matrix.csv").read_bytes() == (one_process / "sat_matrix.csv").read_bytes()


def summary(sweep: Path, job: int) -> dict:
    return json.loads((sweep / str(job) / "summary.json").read_text())


def test_tile_array_with_a_failing_job_then_assemble_equals_one_process(cluster, tmp_path, one_process,
        satlab_in_process):
    cache, sweep = tmp_path / "cache", tmp_path / "multirun"
    # sat.tile=2 does not exist in a 2x1 grid: that job fails (bad input) while the two tiles finish
    code, out, err = ran(cluster, tmp_path, "-m", *MAP, "sat.tiles=2x1", "sat.tile=0,1,2", f"paths.cache_dir={cache}",
                         f"hydra.sweep.dir={sweep}", *LAUNCHER)
    assert code == 2, err[-3000:]
    assert "satlab: sweep: 1 of 3 job(s) failed:" in err and "job 2 [sat.tile=2]: sat.tile=2" in err, err[-3000:]
    # one array job of 3 tasks, submitted with sbatch
    tasks = sorted(p.name for p in (sweep / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    assert len(tasks) == 3 and len({t.split("_")[0] for t in tasks}) == 1, tasks
    assert "#SBATCH --array=0-2" in next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    table = pd.read_csv(sweep / "sweep_overview.csv", keep_default_na=False)
    assert table[["job", "sat.tile", "status"]].values.tolist() == [[0, 0, "ok"], [1, 1, "ok"], [2, 2, "bad input"]]
    # no console noise: sacct's "accounting storage is disabled" and submitit's warnings about it stay out
    console = out + err
    assert "accounting storage" not in console and "sacct" not in console, console[-3000:]
    logs = "".join(p.read_text() for p in job_logs(sweep))
    assert "srun` command is available" not in logs + console
    assert rows(cache) == sorted(NAMES)
    assemble_equals(satlab_in_process, tmp_path, cache, "2x1", one_process)


def test_requeued_tile_resumes_from_what_its_first_attempt_wrote(cluster, tmp_path, one_process,
        satlab_in_process):
    cache, sweep = tmp_path / "cache", tmp_path / "multirun"
    # one tile with every source (a sweep of one job), requeued while it waits for its last source, whose lock
    # this test holds: the job is in the middle of its work however fast the machine is
    held = hold_source_lock(cache, one_process, "test_efficientnet")
    proc = satlab(cluster, tmp_path, "-m", *MAP, "sat.tiles=1x1", "sat.tile=0", f"paths.cache_dir={cache}",
                  f"hydra.sweep.dir={sweep}", *LAUNCHER)
    try:
        job = wait_for(lambda: array_task(cluster, 0), "the tile job runs", proc)
        wait_for(lambda: any(WAITING in f.read_text() for f in job_logs(sweep)), "the job waits for the held source",
                 proc)
        # preempted: suspended, then requeued; SLURM holds a requeued suspended job, so what its first attempt
        # wrote can be read before it starts again
        cluster.run("scontrol", "suspend", job)
        cluster.run("scontrol", "requeue", job)
        wait_for(lambda: "JobState=PENDING" in job_info(cluster, job), "the first attempt ends", proc)
        first = rows(cache)
        cluster.run("scontrol", "release", job)
        cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")  # SLURM delays a requeued job by 2 min
        held.release()
        code, out, err = finish(proc)
    finally:
        proc.kill()
        held.release()
    assert code == 0, err[-3000:]
    assert first == sorted(set(NAMES) - {"test_efficientnet"}), first
    done = summary(sweep, 0)
    assert done["computed_sources"] == ["test_efficientnet"], (first, done)  # no source attacked twice
    assert "Restarts=1" in job_info(cluster, job)
    log = next((sweep / ".submitit").glob(f"{job}/{job}_0_log.out")).read_text()
    assert log.count("Starting with JobEnvironment") == 2, log[-3000:]  # both attempts wrote into the one log
    assemble_equals(satlab_in_process, tmp_path, cache, "1x1", one_process)


def test_cancelled_tile_is_named_shown_and_completed_alone(cluster, tmp_path, one_process,
        satlab_in_process):
    cache, sweep = tmp_path / "cache", tmp_path / "multirun"
    tile1 = ["test_vit", "test_efficientnet"]  # tile 1 of 2x1: every second model from the second
    # tile 1 attacks test_vit, then waits for test_efficientnet, whose lock this test holds: cancelled mid-work
    held = hold_source_lock(cache, one_process, "test_efficientnet")
    proc = satlab(cluster, tmp_path, "-m", *MAP, "sat.tiles=2x1", "sat.tile=0,1", f"paths.cache_dir={cache}",
                  f"hydra.sweep.dir={sweep}", *LAUNCHER)
    try:
        job = wait_for(lambda: array_task(cluster, 1), "tile 1 runs", proc)
        wait_for(lambda: any(WAITING in f.read_text() for f in job_logs(sweep) if f.parent.name == job),
                 "tile 1 waits for the held source", proc)
        cluster.run("scontrol", "suspend", job)
        cluster.run("scancel", job)
        held.release()  # tile 0 may need it too
        code, out, err = finish(proc)
    finally:
        proc.kill()
        held.release()
    # the sweep says which job ended without a result, in one line, and stops waiting
    assert code == 1, err[-3000:]
    assert f"satlab: sweep: Job {job} (task: 0)" in err and "CANCELLED" in err and "Traceback" not in err, err[-3000:]
    assert "JobState=CANCELLED" in job_info(cluster, job)
    # every row in the cache, and the images beside it, read whole (a damaged file would be moved aside)
    for path in (cache / "records").glob("*.npz"):
        if not path.name.startswith("."):
            assert read_row(path) is not None, path
            assert np.load(path.with_suffix(".adv.npy"), mmap_mode="r").shape[0] == 40, path
    assert not list((cache / "records").glob("*.corrupt-*"))
    early = satlab_in_process([*MAP, "sat.tiles=2x1", "sat.assemble=true", f"paths.cache_dir={cache}",
                               f"paths.output_dir={tmp_path / 'early'}"], tmp_path)
    assert early.returncode == 2 and "1 of 2 tile(s) are not in the cache: sat.tile=1 " in early.stderr, early.stderr
    assert not (tmp_path / "early" / "sat_matrix.csv").exists()
    # the progress view: tile 0 done, tile 1 not, where its job logged, the command for tile 1 alone
    view = satlab_in_process([*MAP, "sat.tiles=2x1", "sat.status=true", f"paths.cache_dir={cache}",
                              f"paths.output_dir={tmp_path / 'status'}"], tmp_path)
    assert view.returncode == 0, view.stderr[-3000:]
    status = view.stdout
    lines = status.splitlines()
    assert any(line.startswith("tile 0 (2 source(s) x 4 target(s)): done") for line in lines), status
    assert any(line.startswith("tile 1 (2 source(s) x 4 target(s)): partly done") for line in lines), status
    log = sweep / ".submitit" / job / f"{job}_0_log.out"
    assert f"SLURM job {job}, started" in status and f"log {log}" in status and log.is_file(), status
    command = lines[lines.index(next(ln for ln in lines if ln.startswith("submit the tiles"))) + 1].strip()
    assert command.endswith("sat.tile=1") and "hydra/launcher=submitit_slurm" in command, command
    before = rows(cache, tile1)  # the sources of tile 1 its cancelled job finished
    args = shlex.split(command)
    assert args[:2] == ["satlab", "-m"]
    code, out, err = ran(cluster, tmp_path / "again", *args[1:])  # the printed command, as printed
    assert code == 0, err[-3000:]
    done = json.loads(next((tmp_path / "again" / "multirun").glob("sat/*/0/summary.json")).read_text())
    assert done["tile"]["index"] == 1
    assert before == ["test_vit"] and done["computed_sources"] == ["test_efficientnet"], (before, done)
    assemble_equals(satlab_in_process, tmp_path, cache, "2x1", one_process)


def test_two_array_tasks_share_their_sources(cluster, tmp_path, one_process,
        satlab_in_process):
    """Two array tasks need the same sources at once: each source is attacked by one of them; the other waits on
    its lock and evaluates the stored images. The test holds the lock of one source (the same row file: the key
    depends on the model, data and attack, not on the cache) until both tasks wait for it, so they run at once
    however the scheduler and the machine's load start them."""
    cache, sweep = tmp_path / "cache", tmp_path / "multirun"
    held = hold_source_lock(cache, one_process, "test_efficientnet")
    # 1x2: both tiles hold every source (each with half of the targets); the array runs them at once
    proc = satlab(cluster, tmp_path, "-m", *MAP, "sat.tiles=1x2", "sat.tile=range(2)",
                  f"paths.cache_dir={cache}", f"hydra.sweep.dir={sweep}", *LAUNCHER)
    try:
        wait_for(lambda: len({f.parent.name for f in job_logs(sweep) if WAITING in f.read_text()}) == 2,
                 "both tasks wait", proc)  # a folder per array task
        held.release()
        code, out, err = finish(proc)
    finally:
        proc.kill()
        held.release()
    assert code == 0, err[-3000:]
    a, b = summary(sweep, 0), summary(sweep, 1)
    assert not set(a["computed_sources"]) & set(b["computed_sources"]), (a, b)  # no source attacked twice
    assert sorted(a["computed_sources"] + b["computed_sources"]) == sorted(NAMES)
    # each task evaluated the stored images of the sources the other attacked, on its own targets
    assert set(b["computed_sources"]) <= set(a["completed_sources"]), a
    assert set(a["computed_sources"]) <= set(b["completed_sources"]), b
    attacker, waiter = (a, b) if "test_efficientnet" in a["computed_sources"] else (b, a)
    assert "test_efficientnet" in attacker["computed_sources"] and "test_efficientnet" in waiter["completed_sources"]
    assemble_equals(satlab_in_process, tmp_path, cache, "1x2", one_process)


WAITING = "waiting for another run that is computing the records of source test_efficientnet"


def hold_source_lock(cache: Path, one_process: Path, source: str):
    """The lock of `source`'s row in `cache`, held by this test (release it). The row file's name is the one the
    one-process map wrote: its key depends on the model, data and attack, not on the cache."""
    from filelock import FileLock

    (row,) = (one_process.parent / "cache" / "records").glob(f"{source}-*.npz")
    (cache / "records").mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(cache / "records" / f".{row.name}.lock"))
    lock.acquire()
    return lock


def job_logs(sweep: Path) -> list[Path]:
    """The log files of a sweep's SLURM jobs (stdout and stderr of each)."""
    return list((sweep / ".submitit").glob("*/*_log.*"))
