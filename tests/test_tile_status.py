"""Where a tiled map stands without SLURM: `sat.status=true` on a map with done, partly done and missing tiles
(rows written by tile runs of two grids), the command it prints for the rest, and that command completing the
map; SLURM's job states without accounting (`satlab.tasks.cluster.job_states`, with stand-in sacct and squeue);
no Lightning `srun` hint where SLURM is installed (a stand-in `srun` on PATH). The real cluster: test_slurm.py."""

from __future__ import annotations

import json
import os
import shlex
import warnings
from pathlib import Path

import pytest

from satlab.tasks.cluster import job_states

MAP = ["experiment=smoke", "model_set=timm_tiny", "dataset.samples_per_class=2", "trainer.accelerator=cpu",
       "trainer.enable_progress_bar=false", "sat.print_table=false"]


def test_status_of_a_map_with_missing_and_partial_tiles(tmp_path, satlab_in_process):
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    # a 2x2 tile (test_resnet, test_convnext x themselves), then tile 1 of 4x1 (test_vit x all): in the 4x1 grid
    # tile 0 (test_resnet) and tile 2 (test_convnext) are partly done, tile 1 is done, tile 3 is missing
    for args in (["sat.tiles=2x2", "sat.tile=0"], ["sat.tiles=4x1", "sat.tile=1"]):
        done = satlab_in_process([*MAP, *args, cache], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    rows_before = sorted(p.name for p in (tmp_path / "cache" / "records").iterdir())
    view = satlab_in_process([*MAP, "sat.tiles=4x1", "sat.status=true", cache, f"paths.output_dir={tmp_path / 's'}"],
                             tmp_path)
    assert view.returncode == 0, view.stderr[-3000:]
    lines = view.stdout.splitlines()
    assert "tile 0 (1 source(s) x 4 target(s)): partly done - partly: test_resnet (2 of 4 targets)" in lines
    assert "tile 1 (1 source(s) x 4 target(s)): done" in lines
    assert "tile 2 (1 source(s) x 4 target(s)): partly done - partly: test_convnext (2 of 4 targets)" in lines
    assert "tile 3 (1 source(s) x 4 target(s)): missing" in lines
    after_tile_3 = lines[lines.index("tile 3 (1 source(s) x 4 target(s)): missing") + 1]
    assert after_tile_3.strip().startswith("no job has started")
    assert "4 tile(s): 1 done, 2 partly done, 1 missing" in lines
    run_of_tile_1 = lines[lines.index("tile 1 (1 source(s) x 4 target(s)): done") + 1]
    assert run_of_tile_1.strip().startswith("started ") and "run folder " in run_of_tile_1  # where tile 1 ran
    command = lines[lines.index(next(ln for ln in lines if ln.startswith("submit the tiles"))) + 1].strip()
    assert command.endswith("sat.tile=0,2,3") and "sat.tiles=4x1" in command, command
    # the view runs no model and writes nothing into the cache
    assert sorted(p.name for p in (tmp_path / "cache" / "records").iterdir()) == rows_before
    # the printed command submits just those tiles (here with Hydra's basic launcher, as tile 1 ran)
    args = shlex.split(command)
    again = satlab_in_process(args[1:], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "multirun").glob("sat/*/*/summary.json")]
    assert sorted(s["tile"]["index"] for s in summaries) == [0, 2, 3]
    # tiles 0 and 2 completed their rows from the stored images: their sources are not attacked again
    assert {src for s in summaries for src in s["computed_sources"]} == {"test_efficientnet"}
    view = satlab_in_process([*MAP, "sat.tiles=4x1", "sat.status=true", cache, f"paths.output_dir={tmp_path / 't'}"],
                             tmp_path)
    assert "4 tile(s): 4 done, 0 partly done, 0 missing" in view.stdout, view.stdout
    assert "every tile is done; the map: satlab " in view.stdout and "sat.assemble=true" in view.stdout


def test_tiles_of_a_map_at_a_stated_precision_show_assemble_and_equal_one_job(tmp_path, satlab_in_process):
    precision = ["sat.precision=1.0", "sat.first_round=5"]  # 20 images: rounds of 5, 10, 20
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    first = satlab_in_process([*MAP, *precision, "sat.tiles=2x1", "sat.tile=0", cache], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    view = satlab_in_process([*MAP, *precision, "sat.tiles=2x1", "sat.status=true", cache,
                              f"paths.output_dir={tmp_path / 's'}"], tmp_path)
    # with a precision, a tile computes both directions of its pairs (A, B) with A before B in the model set:
    # tile 0 (test_resnet, test_convnext x all) those of test_resnet with all and test_convnext with
    # test_efficientnet; test_vit / test_convnext and test_vit / test_efficientnet are tile 1's
    assert "tile 0 (2 source(s) x 4 target(s)): done" in view.stdout, view.stdout
    assert ("tile 1 (2 source(s) x 4 target(s)): partly done - done: test_efficientnet; partly: test_vit (1 of 3 "
            "targets)") in view.stdout, view.stdout
    early = satlab_in_process([*MAP, *precision, "sat.tiles=2x1", "sat.assemble=true", cache,
                               f"paths.output_dir={tmp_path / 'early'}"], tmp_path)
    assert early.returncode == 2 and "sat.tile=1 " in early.stderr, early.stderr
    second = satlab_in_process([*MAP, *precision, "sat.tiles=2x1", "sat.tile=1", cache], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    done = satlab_in_process([*MAP, *precision, "sat.tiles=2x1", "sat.assemble=true", cache,
                              f"paths.output_dir={tmp_path / 'assembled'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    one = satlab_in_process([*MAP, *precision, f"paths.cache_dir={tmp_path / 'one_cache'}",
                             f"paths.output_dir={tmp_path / 'one'}"], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    for name in ("sat_matrix.csv", "sat_ci.csv"):
        assert (tmp_path / "assembled" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


def stand_in(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def test_job_states_without_accounting_come_from_squeue(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit.slurm.slurm", reason="pip install hydra-submitit-launcher")
    bin_dir = tmp_path / "bin"
    stand_in(bin_dir, "sacct", 'echo "Slurm accounting storage is disabled" >&2; exit 1\n')
    stand_in(bin_dir, "squeue", 'echo "$@" > "$(dirname "$0")/asked"; printf "12_0|COMPLETED|vm\\n12_1|CANCELLED|vm\\n'
                                '12_[2-3]|PENDING|\\n"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out, err, status = job_states(["-o", "JobID,State,NodeList", "--parsable2", "-j", "12"])
    assert (status, err) == (0, "")  # nothing for the console
    assert "--states=all --jobs 12 --format=%i|%T|%N" in (bin_dir / "asked").read_text()
    info = submitit.SlurmInfoWatcher().read_info(out)  # as submitit reads sacct
    assert {job: info[job]["State"] for job in ("12_0", "12_1", "12_2", "12_3")} == {
        "12_0": "COMPLETED", "12_1": "CANCELLED", "12_2": "PENDING", "12_3": "PENDING"}
    # with accounting, sacct's answer as it is
    stand_in(bin_dir, "sacct", 'printf "JobID|State|NodeList\\n7|RUNNING|vm\\n"\n')
    assert job_states(["-j", "7"]) == ("JobID|State|NodeList\n7|RUNNING|vm\n", "", 0)


def test_no_srun_hint_where_slurm_is_installed(tmp_path, monkeypatch, satlab_in_process):
    from lightning_fabric.plugins.environments import SLURMEnvironment

    stand_in(tmp_path / "bin", "srun", "exit 0\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    with warnings.catch_warnings(record=True) as caught:  # Lightning itself gives the hint here
        warnings.simplefilter("always")
        SLURMEnvironment._validate_srun_used()
    assert any("`srun` command is available" in str(w.message) for w in caught)
    out = tmp_path / "run"
    done = satlab_in_process([*MAP, f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={out}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "sat_matrix.csv").is_file()
    logs = "".join(p.read_text() for p in tmp_path.rglob("*.log"))
    console = done.stdout + done.stderr + logs
    assert "`srun` command is available" not in console and "prepend your python command" not in console
