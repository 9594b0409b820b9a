"""Caches across processes: two concurrent runs share the per-source rows (no source attacked twice), and a run
killed with SIGKILL resumes to a byte-identical sat_matrix.csv, attacking none of the sources it had finished; both
also for maps at a stated precision (`sat.precision`), whose sources are attacked in rounds."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from satlab.sat.records import load_records

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
       "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}

# One run of the engine on 4 tiny random-init models: imports and builds everything, waits for its go-file,
# then computes the records with the shared cache and prints what it reused/computed and a digest of them.
WORKER = """
import hashlib, json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from satlab.attacks import create_attack
from satlab.data.common import TensorImages
from satlab.models.factory import build_model
from satlab.models.specs import ModelSpec
from satlab.models import ModelSet
from satlab.sat.engine import compute_records

cache, go = Path(sys.argv[1]), Path(sys.argv[2])
precision = float(sys.argv[3]) if len(sys.argv) > 3 else None  # a map at a stated precision: rounds of 8, 16, ...
names = ["test_resnet", "test_vit", "test_convnext", "test_efficientnet"]
args = {"test_vit": {"dynamic_img_size": True}}
models = [build_model(ModelSpec(n, n, input_size=32, model_args=args.get(n, {})), 3, 32) for n in names]
gen = torch.Generator().manual_seed(0)
data = TensorImages(torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8, generator=gen),
                    [i % 3 for i in range(48)], range(48))
while not go.exists():
    time.sleep(0.02)
result = compute_records(ModelSet.from_models(names, models), data,
                         create_attack("pgd_linf", eps=8 / 255, steps=20), batch_size=64, cache_dir=cache,
                         trainer_cfg={"accelerator": "cpu", "enable_progress_bar": False}, precision=precision,
                         first_round=8)
records, used = result.records, result.records.images_used
digest = hashlib.sha256(records.fooled.tobytes() + records.correct.tobytes()
                        + (b"" if used is None else used.tobytes())).hexdigest()
# the images the map's attacks cover (each source's correct images within its own column's images)
needed = sum(int((records.correct[a] & (True if used is None else records.scope()[a, a])).sum())
             for a in range(len(names)))
print(json.dumps({"reused": result.reused, "computed": result.computed, "digest": digest, "work": result.work,
                  "attacks_needed": needed}))
"""


def held_by_another_process(lock: Path) -> bool:
    """Whether another process holds the flock on `lock` (probed without waiting, released at once)."""
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def rows(cache: Path) -> list[Path]:
    """Finished records rows (atomic writes go through hidden temp files first; locks are hidden too)."""
    return [p for p in (cache / "records").glob("*.npz") if not p.name.startswith(".")]


def wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process ended (status {proc.returncode}) before {what}: "
                                 f"{(err or out or '')[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def concurrent_runs(tmp_path: Path, *extra: str) -> tuple[dict, dict, list[Path]]:
    """Two WORKER runs on one cache, the second started while the first attacks a source (holds its row's lock):
    their outputs and the locks the first held then."""
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(cache), str(tmp_path / f"go{i}"), *extra], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    try:
        (tmp_path / "go0").touch()
        busy = wait_for(lambda: [p for p in (cache / "records").glob(".*.lock") if held_by_another_process(p)],
                        "the first run locks a row", procs[0])
        (tmp_path / "go1").touch()
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    first, second = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)
    return first, second, busy


def test_two_concurrent_runs_share_the_rows(tmp_path):
    first, second, busy = concurrent_runs(tmp_path)
    names = ["test_resnet", "test_vit", "test_convnext", "test_efficientnet"]
    assert not set(first["computed"]) & set(second["computed"]), (first, second)  # no source attacked twice
    assert sorted(first["computed"] + second["computed"]) == sorted(names)
    locked_source = busy[0].name[1:].rsplit("-", 1)[0]  # ".<source>-<key>.npz.lock"
    assert locked_source not in second["computed"]  # it waited for the first run's attack instead of repeating it
    assert first["digest"] == second["digest"]


def test_two_concurrent_runs_at_a_stated_precision_attack_each_image_once(tmp_path):
    first, second, _ = concurrent_runs(tmp_path, "0.5")
    assert first["digest"] == second["digest"]
    # the rounds' attacks were shared: together the two runs attacked the map's images once
    assert first["work"]["attacked"] + second["work"]["attacked"] == first["attacks_needed"], (first, second)


def satlab(out: Path, cache: Path, *extra: str) -> subprocess.Popen:
    args = ["experiment=smoke", "model_set=timm_tiny", "attack=pgd_linf", "attack.steps=20", "dataset.samples_per_class=8",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "sat.print_table=false",
            f"paths.cache_dir={cache}", f"paths.output_dir={out}", *extra]
    return subprocess.Popen([sys.executable, "-m", "satlab.cli", *args], env=ENV, cwd=out.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def kill_and_resume(tmp_path: Path, *extra: str) -> tuple[list[str], str]:
    """A reference run on its own cache; another run killed with SIGKILL after its first cached row, then resumed
    on that cache: the rows there at the kill and the resumed run's log (all three exited as they should)."""
    reference = satlab(tmp_path / "reference", tmp_path / "cache_ref", *extra)  # uninterrupted, its own cache
    killed = satlab(tmp_path / "killed", tmp_path / "cache", *extra)
    try:
        wait_for(lambda: rows(tmp_path / "cache"), "the first cached row", killed)
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=60)
        assert killed.returncode == -signal.SIGKILL
        done = sorted(p.name for p in rows(tmp_path / "cache"))
        assert not (tmp_path / "killed" / "sat_matrix.csv").exists()
        resumed = satlab(tmp_path / "resumed", tmp_path / "cache", *extra)
        log = resumed.communicate(timeout=600)[0]
        assert resumed.returncode == 0, log[-3000:]
        assert reference.wait(timeout=600) == 0, reference.communicate()[0][-3000:]
    finally:
        for p in (reference, killed):
            p.kill()
    return done, log


def test_resume_after_kill_is_byte_identical(tmp_path):
    done, log = kill_and_resume(tmp_path)
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    finished = {n.rsplit("-", 1)[0] for n in done}  # sources attacked before the kill: their rows and images stay
    assert finished and not finished & set(summary["computed_sources"]), (finished, summary["computed_sources"])
    assert summary["computed_sources"], "the kill came after every source was attacked; nothing was resumed"
    for source in finished:
        assert f"source {source}: cached row lacks" in log and source in summary["completed_sources"]
    assert "records: " in log and "completed from stored adversarial images" in log
    ours = (tmp_path / "resumed" / "sat_matrix.csv").read_bytes()
    assert ours == (tmp_path / "reference" / "sat_matrix.csv").read_bytes()
    a, b = load_records(tmp_path / "resumed" / "records.npz"), load_records(tmp_path / "reference" / "records.npz")
    assert np.array_equal(a.fooled, b.fooled) and np.array_equal(a.correct, b.correct)


def test_resume_after_kill_at_a_stated_precision_is_byte_identical(tmp_path):
    kill_and_resume(tmp_path, "sat.precision=0.5", "sat.first_round=16")
    for name in ("sat_matrix.csv", "sat_ci.csv"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()
    a, b = load_records(tmp_path / "resumed" / "records.npz"), load_records(tmp_path / "reference" / "records.npz")
    for key in ("fooled", "correct", "images_used", "image_order"):
        assert np.array_equal(getattr(a, key), getattr(b, key))
    work = {run: json.loads((tmp_path / run / "summary.json").read_text())["engine_work"]
            for run in ("resumed", "reference")}
    assert work["resumed"]["attacked"] < work["reference"]["attacked"]  # what was attacked before the kill stays
