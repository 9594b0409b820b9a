"""Sweep overviews (satlab.tasks.sweep) and the command's console: the table a multirun writes beside its jobs,
rebuilt from the job folders alone (so jobs of any launcher can write it), warnings as one plain log line."""

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from satlab import cli
from satlab.sat.records import write_matrix
from satlab.tasks import sweep
from satlab.utils import write_json
from test_bad_input import run_cli, write_tiny_matrix


def make_job(root: Path, num: int, overrides: list[str], status: str | None, summary: dict | None = None,
             sat: np.ndarray | None = None, message: str = "") -> Path:
    """A job folder as a sweep leaves it: Hydra's overrides, the job's status file, a summary and a matrix."""
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if status is not None:
        sweep.write_job_status(job, num, status, message)
    if summary is not None:
        write_json(job / "summary.json", summary)
    if sat is not None:
        write_matrix(job / "sat_matrix.csv", [f"m{i}" for i in range(len(sat))], sat)
    return job


def sat_summary(accuracy: list[float], whitebox: list[float], auc: float, twins: list) -> dict:
    names = [f"m{i}" for i in range(len(accuracy))]
    return {"task": "sat", "samples": 40, "clean_accuracy": dict(zip(names, accuracy)),
            "whitebox_success": dict(zip(names, whitebox)), "floored_pairs": [["m0", "m2"]],
            "structure": {"same_family_auc": auc, "twins_rank": twins}}


def test_overview_from_job_folders(tmp_path):
    """Four jobs of a sweep over attack.eps (ok, ok, bad input, crashed) and one still running: one row each,
    the swept override as a column, the shared overrides listed once, the headline computed from each job's files."""
    root = tmp_path / "multirun" / "sat" / "2026-01-01_00-00-00_abcdef"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": [
        "experiment=smoke", "attack.eps=0.0627451,0.1254902,0.2509804,0.5,0.75"]}}}))
    rng = np.random.default_rng(0)
    sats = []
    for num, eps in enumerate(("0.0627451", "0.1254902")):
        sat = rng.uniform(0.5, 4.0, (3, 3))
        sat = (sat + sat.T) / 2
        np.fill_diagonal(sat, np.log(100))
        if num == 1:
            sat[0, 1] = sat[1, 0] = np.nan  # a pair without a value
        sats.append(sat)
        make_job(root, num, ["experiment=smoke", f"attack.eps={eps}"], "ok",
                 sat_summary([0.9, 0.8, 0.7 + num / 10], [100.0, 95.0, 90.0], 0.75, [["m0", "m1", 1 + num]]), sat)
    make_job(root, 2, ["experiment=smoke", "attack.eps=0.2509804"], "bad input", message="attack.eps=... no")
    make_job(root, 3, ["experiment=smoke", "attack.eps=0.5"], "crashed", message="RuntimeError: boom")
    make_job(root, 4, ["experiment=smoke", "attack.eps=0.75"], None)  # started, not ended (or killed)
    (root / ".submitit" / "x" / ".hydra").mkdir(parents=True)  # submitit's folder is no job
    (root / ".submitit" / "x" / ".hydra" / "overrides.yaml").write_text("[]")

    csv_path, md_path = sweep.write_overview(root)
    assert (csv_path.parent, md_path.parent) == (root, root)
    table = pd.read_csv(csv_path, keep_default_na=False, dtype=str)
    assert table["job"].tolist() == ["0", "1", "2", "3", "4"]
    assert table.columns[:3].tolist() == ["job", "attack.eps", "status"]
    assert table["attack.eps"].tolist() == ["0.0627451", "0.1254902", "0.2509804", "0.5", "0.75"]
    assert table["status"].tolist() == ["ok", "ok", "bad input", "crashed", "unfinished"]
    assert table["message"].tolist() == ["", "", "attack.eps=... no", "RuntimeError: boom", ""]
    assert table["run"].tolist() == [str(root / str(i)) for i in range(5)]
    for num, sat in enumerate(sats):
        pairs = sat[np.triu_indices(3, 1)]
        finite = pairs[np.isfinite(pairs)]
        row = table.iloc[num]
        assert float(row["sat_min"]) == pytest.approx(finite.min(), abs=5e-4)
        assert float(row["sat_median"]) == pytest.approx(np.median(finite), abs=5e-4)
        assert float(row["sat_max"]) == pytest.approx(finite.max(), abs=5e-4)
        assert int(row["pairs_without_value"]) == int((~np.isfinite(pairs)).sum())
        assert float(row["clean_accuracy"]) == pytest.approx(np.mean([0.9, 0.8, 0.7 + num / 10]), abs=5e-5)
        assert float(row["whitebox_success"]) == pytest.approx(95.0)
        assert row["twins_rank"] == f"m0/m1 {1 + num}" and row["floored_pairs"] == "1"
        assert row["same_family_auc"] == "0.75"
    assert table.loc[2:, "sat_min"].tolist() == ["", "", ""]  # failed and unfinished jobs: no results

    text = md_path.read_text()
    assert "5 job(s): 2 ok, 1 bad input, 1 crashed, 1 unfinished" in text
    assert "Every job: `experiment=smoke`" in text
    assert text.count("\n| ") == 6  # the header and one line per job
    assert "| 3 | 0.5 | crashed |" in text

    jobs, failed = sweep.ended_jobs(root)  # what the command reports when the jobs ran elsewhere (submitit)
    assert sorted(jobs) == [0, 1, 2, 3, 4] and jobs[2] == ["experiment=smoke", "attack.eps=0.2509804"]
    assert failed == [(2, "attack.eps=... no", True), (3, "RuntimeError: boom", False)]


def test_overrides_that_differ_are_columns_without_multirun_yaml(tmp_path):
    """A job that rebuilds the table finds the swept keys from the jobs' overrides when multirun.yaml is gone;
    other tasks get their summary's numbers; a stale status file from an earlier sweep is cleared at job start."""
    summary = {"task": "analyze", "n_models": 4, "clusters": {"n_clusters": 2}, "kappa": {"spearman_rho": 0.5}}
    make_job(tmp_path, 0, ["task=analyze", "seed=0", "analyze.n_estimators=5"], "ok", summary)
    make_job(tmp_path, 1, ["task=analyze", "seed=1", "analyze.n_estimators=5"], "ok", {**summary, "n_models": 5})
    table, shared = sweep.overview(tmp_path)
    assert table.columns.tolist()[:3] == ["job", "seed", "status"] and shared == {"task": "analyze",
                                                                                 "analyze.n_estimators": "5"}
    assert table["n_models"].tolist() == [4, 5] and table["kappa_rho"].tolist() == [0.5, 0.5]
    sweep.clear_job_status(tmp_path / "1")
    assert sweep.overview(tmp_path)[0]["status"].tolist() == ["ok", "unfinished"]
    with pytest.raises(ValueError, match="status must be one of"):
        sweep.write_job_status(tmp_path / "0", 0, "fine")


def test_sweep_writes_its_overview_as_jobs_end(tmp_path, monkeypatch, capsys):
    """A real (in-process, cheap) task=analyze sweep with one bad job: the table beside the jobs has both kinds
    of rows, the swept option as a column, and the command prints where it is."""
    matrix = write_tiny_matrix(tmp_path / "m.csv")
    root = tmp_path / "sweep"
    hook = warnings.showwarning
    code, out, err = run_cli(["-m", "task=analyze", "model_set=timm_tiny", f"analyze.matrix={matrix}",
                              "logger=none", "analyze.importance_seeds=1", "analyze.n_repeats=1",
                              "analyze.n_estimators=5,abc", f"hydra.sweep.dir={root}"], monkeypatch, capsys)
    assert code == 2, err[-2000:]
    assert f"sweep overview: {root / 'sweep_overview.md'}" in out
    table = pd.read_csv(root / "sweep_overview.csv", keep_default_na=False, dtype=str)
    assert table[["job", "analyze.n_estimators", "status"]].values.tolist() == [["0", "5", "ok"],
                                                                               ["1", "abc", "bad input"]]
    assert table["n_models"].tolist() == ["4", ""]
    assert table["message"][1] == "analyze.n_estimators=abc must be an integer >= 1"
    assert json.loads((root / "1" / sweep.STATUS_FILE).read_text())["status"] == "bad input"
    assert warnings.showwarning is hook  # the jobs' warning hook is undone when they end


def test_warnings_become_one_plain_log_line(caplog):
    """The command's warning hook: satlab's own warnings and the libraries' other warnings as one log line
    without Python's source line; the libraries' deprecation notices only in the debug log."""
    with caplog.at_level(logging.DEBUG, logger="satlab"):
        cli._show_warning(RuntimeWarning("3 model pair(s) have an empty X_AB\nsecond line"), RuntimeWarning,
                          str(Path(cli.__file__).parent / "tasks" / "sat.py"), 99)
        cli._show_warning(UserWarning("a library says something"), UserWarning, "/site-packages/lib/x.py", 1)
        cli._show_warning(DeprecationWarning("old API"), DeprecationWarning, "/site-packages/lib/x.py", 1)
    shown = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert shown == [("WARNING", "3 model pair(s) have an empty X_AB; second line"),
                     ("WARNING", "a library says something"), ("DEBUG", "old API (/site-packages/lib/x.py:1)")]
