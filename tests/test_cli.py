"""The `satlab` command: every config composes, tiny end-to-end runs write every output, bad input fails cleanly."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from satlab.analysis.structure import family_auc
from satlab.cli import run
from satlab.sat import metric
from satlab.sat.records import load_records, read_matrix
from satlab.tasks import TASKS
from satlab.tasks.checks import check_config
from satlab.utils import write_text
from test_bad_input import write_tiny_matrix

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
OUTPUTS = ("records.npz", "sat_matrix.csv", "transfer_rates.csv", "models.csv", "heatmap.png", "summary.json")
FAST = ["logger=none", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]


def compose_cfg(overrides, tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config",
            overrides=[*FAST, f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}",
                       *overrides],
        )


def _leaves(node, prefix=""):
    """(dotted key, value) of every scalar in a plain nested dict."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("group", ["dataset", "model_set", "attack", "task", "logger", "trainer"])
def test_every_config_option_composes(group, tmp_path):
    """Each option composes, lands where its file says (its group, or the root for `# @package _global_`), keeps
    every value of its file, names itself, and passes the config checks."""
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert len(options) >= 2, f"conf/{group} has {options}"
    for option in options:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[f"{group}={option}", f"paths.output_dir={tmp_path}"])
        text = (CONF / group / f"{option}.yaml").read_text()
        raw = OmegaConf.to_container(OmegaConf.create(text))
        raw.pop("defaults", None)
        base = cfg if "# @package _global_" in text else cfg[group]
        for key, value in _leaves(raw):
            if value == "???":
                assert OmegaConf.is_missing(base, key), f"{group}={option}: {key}"
            elif not (isinstance(value, str) and "${" in value):  # interpolations resolve elsewhere
                assert OmegaConf.select(base, key) == value, f"{group}={option}: {key}"
        if group in ("dataset", "model_set", "attack", "logger"):
            assert cfg[group].name == option
        if group == "task":
            assert cfg.task.name == option
        check_config(cfg)  # every shipped option passes the schema


def test_config_checks_pass_for_every_preset(tmp_path):
    for preset in sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")):
        cfg = compose_cfg([f"experiment={preset}"], tmp_path)
        check_config(cfg)
        assert cfg.task.name in TASKS and cfg.seed == 0


def test_experiment_presets(tmp_path):
    assert {"ensemble_digits", "paper69_ensemble", "paper69_imagenet", "smoke"} <= {
        p.stem for p in (CONF / "experiment").glob("*.yaml")}
    paper = compose_cfg(["experiment=paper69_imagenet", "dataset.root=/data/val"], tmp_path)
    assert paper.dataset.name == "imagenet" and paper.dataset.samples_per_class == 5
    assert len(paper.model_set.models) == 68 and "gluon_xception65" not in paper.model_set.models
    smoke = compose_cfg(["experiment=smoke"], tmp_path)
    assert (smoke.model_set.name, smoke.attack.name, smoke.logger.name) == ("timm_tiny", "fgsm", "none")


def test_default_config_is_the_main_job(tmp_path):
    cfg = compose_cfg([], tmp_path)
    assert cfg.task.name == "sat" and cfg.dataset.name == "digits" and cfg.model_set.name == "digits_zoo"
    assert cfg.attack.name == "pgd_linf"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        assert compose("config").logger.mode == "offline"


def test_tiny_run_writes_every_output(tmp_path):
    cfg = compose_cfg(["model_set=timm_tiny", "dataset.samples_per_class=4", "attack.steps=2"], tmp_path)
    summary = run(cfg)
    out = tmp_path / "out"
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rec = load_records(out / "records.npz")
    names, sat = read_matrix(out / "sat_matrix.csv", symmetric_tol=1e-9)
    assert names == rec.models == summary["models"]
    # SAT recomputed from the records by the formula equals the written matrix
    np.testing.assert_allclose(sat, metric.sat_matrix(rec.correct, rec.fooled, cfg.sat.eps_s), rtol=1e-9)
    assert (np.diagonal(sat)[np.isfinite(np.diagonal(sat))] <= math.log(100) + 1e-9).all()
    _, rates = read_matrix(out / "transfer_rates.csv")
    np.testing.assert_allclose(rates, metric.transfer_rates(rec.correct, rec.fooled), rtol=1e-9)
    summary_file = json.loads((out / "summary.json").read_text())
    assert summary_file["config_hash"] and summary_file["versions"]["torch"] == torch.__version__.split("+")[0]
    assert set(summary_file["timings_s"]) >= {"data", "models", "engine"}
    models_csv = (out / "models.csv").read_text().splitlines()
    assert models_csv[0].startswith("model,family,clean_accuracy")
    assert len(models_csv) == 5
    shape = summary_file["structure"]  # the map's same-family AUC, recomputed from the written matrix
    families = [line.split(",")[1] for line in models_csv[1:]]
    assert shape["same_family_auc"] == pytest.approx(family_auc(sat, families)[0])
    assert shape["same_family_pairs"] + shape["cross_family_pairs"] == 6


def test_cli_imagefolder_fgsm_and_sweep(tiny_imagefolder, tmp_path, satlab_in_process):
    common = ["model_set=timm_tiny", "dataset=imagefolder", f"dataset.root={tiny_imagefolder}",
              "dataset.resize=32", "dataset.resolution=32", *FAST]
    cache = {"SATLAB_CACHE_DIR": str(tmp_path / "cache")}
    done = satlab_in_process([*common, "attack=fgsm", "hydra.run.dir=run"], tmp_path, cache)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in OUTPUTS:
        assert (tmp_path / "run" / name).is_file(), name
    sweep = satlab_in_process(["-m", *common, "attack.eps=0.03,0.1", "hydra.sweep.dir=sweep"], tmp_path, cache)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    eps = [json.loads((tmp_path / "sweep" / str(i) / "summary.json").read_text())["attack"]["eps"] for i in (0, 1)]
    assert eps == [8 / 255, 26 / 255]  # the budgets used: 0.03 and 0.1 snapped to whole 8-bit levels


ANALYZE_FAST = ["task=analyze", "model_set=timm_tiny", "logger=none", "analyze.importance_seeds=1", "analyze.n_repeats=1",
                "analyze.n_estimators=5"]


def test_runs_started_together_get_their_own_folders(tmp_path):
    """Two runs started in the same second never share a run folder; files get the user's umask (022: 0644)."""
    matrix = write_tiny_matrix(tmp_path / "m.csv")
    env = {**os.environ, "SATLAB_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    procs = [subprocess.Popen([sys.executable, "-m", "satlab.cli", *ANALYZE_FAST, f"analyze.matrix={matrix}"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: os.umask(0o022)) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    runs = sorted((tmp_path / "outputs" / "analyze").iterdir())
    assert len(runs) == 2, runs
    for run_dir in runs:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{6}", run_dir.name), run_dir.name
        summary = run_dir / "summary.json"
        assert json.loads(summary.read_text())["n_models"] == 4
        assert summary.stat().st_mode & 0o777 == 0o644
        assert (run_dir / "report.md").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(umask, mode, tmp_path):
    old = os.umask(umask)
    try:
        path = write_text(tmp_path / "sub" / "a.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
    assert (tmp_path / "sub").stat().st_mode & 0o777 == 0o777 & ~umask


def test_non_editable_install_finds_its_configs(tmp_path):
    """`pip install .` (a wheel, not editable) ships conf/ as satlab.conf; the installed CLI composes from it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "satlab", "conf"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, src / name)
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
           "--target", str(target), str(src)]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (target / "satlab" / "conf" / "config.yaml").is_file()
    assert sorted(p.name for p in (target / "satlab" / "conf" / "experiment").glob("*.yaml")) == sorted(
        p.name for p in (CONF / "experiment").glob("*.yaml"))
    env = {**os.environ, "PYTHONPATH": str(target)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = "import satlab.cli as c; print(c.__file__); print(c.CONF_DIR)"
    where = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=elsewhere)
    assert where.stdout.split() == [str(target / "satlab" / "cli.py"), str(target / "satlab" / "conf")], where
    shown = subprocess.run([sys.executable, "-m", "satlab.cli", "experiment=smoke", "--cfg", "job"],
                           capture_output=True, text=True, env=env, cwd=elsewhere, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    job = OmegaConf.create(shown.stdout)
    assert (job.model_set.name, job.attack.name, job.dataset.samples_per_class) == ("timm_tiny", "fgsm", 4)
