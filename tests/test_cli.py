"""The `satlab` command: every config composes, tiny end-to-end runs write every output, bad input fails cleanly."""

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
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
    assert (smoke.model_set.name, smoke.attack.name, smoke.logger.name) == ("digits_tiny", "fgsm", "none")


OFFLINE_DATASETS = ("digits", "shapes")  # the presets on other datasets need their images (ImageNet, Flowers)


def test_offline_presets_compare_trained_models(tmp_path):
    """Every preset that runs offline compares models trained on the dataset (a zoo: each model has a train_seed),
    never timm's random weights, which classify almost no image correctly: their map is all NaN (empty X_AB)."""
    from satlab.models.specs import model_specs

    checked = []
    for preset in sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")):
        cfg = compose_cfg([f"experiment={preset}"], tmp_path)
        if cfg.dataset.name not in OFFLINE_DATASETS:
            continue
        untrained = [s.name for s in model_specs(cfg.model_set) if s.train_seed is None]
        assert not untrained and not cfg.model_set.pretrained, (preset, untrained)
        checked.append(preset)
    assert {"smoke", "ensemble_digits", "cross_dataset_digits", "distill_digits"} <= set(checked)


def test_smoke_gives_a_finite_map_then_analyze_works(tmp_path, monkeypatch, capsys):
    """`satlab experiment=smoke` then `satlab task=analyze` (in-process), as on a fresh clone: the smoke's models
    are trained (into SATLAB_CACHE_DIR, shared with test_engine, else a fresh temp cache), every pair has a SAT
    value, the analysis runs on the result, and neither command prints a Python warning or a source line."""
    from test_bad_input import run_cli

    monkeypatch.chdir(tmp_path)  # runs go to ./outputs; task=analyze finds the newest sat run there
    handlers = logging.getLogger().handlers[:]  # Hydra's job logging replaces them (streams of this test's capsys)
    monkeypatch.setattr(logging.getLogger(), "handlers", handlers[:])
    cache = os.environ.get("SATLAB_CACHE_DIR") or str(tmp_path / "cache")
    code, out, err = run_cli(["experiment=smoke", "trainer.enable_progress_bar=false", f"paths.cache_dir={cache}"],
                             monkeypatch, capsys)
    assert code == 0, err[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "sat").iterdir()
    names, sat = read_matrix(run_dir / "sat_matrix.csv")
    assert len(names) >= 3 and np.isfinite(sat).all(), sat
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["structure"]["same_family_auc"] is not None and not summary["floored_pairs"]
    code, out2, err2 = run_cli(["task=analyze", "analyze.importance_seeds=1", "analyze.n_repeats=1",
                                "analyze.n_estimators=5", f"paths.cache_dir={cache}"], monkeypatch, capsys)
    assert code == 0, err2[-3000:]
    (analysis,) = (tmp_path / "outputs" / "analyze").iterdir()
    assert json.loads((analysis / "summary.json").read_text())["n_models"] == len(names)
    console = out + err + out2 + err2
    assert not re.search(r"Warning|\.py:\d+", console), console[-3000:]


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
    # random weights: pairs with an empty X_AB are said in one plain log line, not as a Python warning
    assert "model pair(s) have no image both models classify correctly (empty X_AB)" in done.stdout, done.stdout
    assert not re.search(r"Warning|\.py:\d+", done.stdout + done.stderr), done.stderr[-3000:]
    for name in OUTPUTS:
        assert (tmp_path / "run" / name).is_file(), name
    sweep = satlab_in_process(["-m", *common, "attack.eps=0.03,0.1", "hydra.sweep.dir=sweep"], tmp_path, cache)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    eps = [json.loads((tmp_path / "sweep" / str(i) / "summary.json").read_text())["attack"]["eps"] for i in (0, 1)]
    assert eps == [8 / 255, 26 / 255]  # the budgets used: 0.03 and 0.1 snapped to whole 8-bit levels
    # the sweep's overview beside its jobs: one row per job, the swept option as a column, each job's map
    assert "sweep overview: sweep/sweep_overview.md" in sweep.stdout
    table = pd.read_csv(tmp_path / "sweep" / "sweep_overview.csv", keep_default_na=False)
    assert table[["job", "attack.eps", "status", "run"]].values.tolist() == [[0, 0.03, "ok", "sweep/0"],
                                                                           [1, 0.1, "ok", "sweep/1"]]
    for i in (0, 1):
        _, sat = read_matrix(tmp_path / "sweep" / str(i) / "sat_matrix.csv")
        finite = sat[np.triu_indices(len(sat), 1)]
        finite = finite[np.isfinite(finite)]
        expected = [round(float(v), 3) for v in (finite.min(), finite.max())] if len(finite) else ["", ""]
        assert table.loc[i, ["sat_min", "sat_max"]].tolist() == expected
    assert "| job | attack.eps | status |" in (tmp_path / "sweep" / "sweep_overview.md").read_text()


ANALYZE_FAST = ["task=analyze", "model_set=timm_tiny", "logger=none", "analyze.importance_seeds=1", "analyze.n_repeats=1",
                "analyze.n_estimators=5"]


def test_runs_started_together_get_their_own_folders(tmp_path, monkeypatch, satlab_in_process):
    """Two runs started in the same second never share a run folder (the clock is pinned, so both runs' folder names
    have the same time); files get the user's umask (022: 0644)."""
    import datetime as dt

    import hydra.core.utils

    class Pinned(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 2, 6, 0, 0)

    monkeypatch.setattr(hydra.core.utils, "datetime", Pinned)  # Hydra's ${now:...} resolver reads this clock
    matrix = write_tiny_matrix(tmp_path / "m.csv")
    old = os.umask(0o022)
    try:
        for _ in range(2):
            done = satlab_in_process([*ANALYZE_FAST, f"analyze.matrix={matrix}"], tmp_path)
            assert done.returncode == 0, done.stderr[-2000:]
    finally:
        os.umask(old)
    runs = sorted((tmp_path / "outputs" / "analyze").iterdir())
    assert len(runs) == 2, runs
    for run_dir in runs:
        assert re.fullmatch(r"2026-12-02_06-00-00_[0-9a-f]{6}", run_dir.name), run_dir.name
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
    assert (job.model_set.name, job.attack.name, job.dataset.samples_per_class) == ("digits_tiny", "fgsm", 4)


@pytest.mark.parametrize("value, why", [("/data/bilder_ä", ""), ("/data/my images (1)", " (mismatched input ' ('")])
def test_a_value_hydra_cannot_read_gets_the_quoting_hint(value, why, tmp_path, monkeypatch, capsys):
    """A path with a non-ASCII letter or a parenthesis stops Hydra's override grammar: one line that names the
    override and shows it quoted; the quoted form then reads back as the path."""
    from test_bad_input import assert_one_line_error, run_cli

    code, _, err = run_cli(["dataset=imagefolder", f"dataset.root={value}", f"hydra.run.dir={tmp_path / 'run'}"],
                           monkeypatch, capsys)
    line = assert_one_line_error(code, err, f"cannot read the override 'dataset.root={value}'{why}")
    assert line.endswith(f"""write 'dataset.root="{value}"' (double quotes for Hydra inside single quotes for the """
                         "shell)"), line
    assert not (tmp_path / "run").exists()
    quoted = compose_cfg(["dataset=imagefolder", f'dataset.root="{value}"'], tmp_path)
    assert quoted.dataset.root == value


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("satlab: error:")]


def test_a_missing_submitit_launcher_names_the_extra(tmp_path, monkeypatch, satlab_in_process):
    """`hydra/launcher=submitit_slurm` without the slurm extra (as after `make demo`): one line saying what to
    install, exit 2, nothing written. The launcher's configs are removed from Hydra's store for the test, as when
    the plugin is not installed."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # Hydra's plugin scan (once per process) registers the launcher configs removed below
    launchers = ConfigStore.instance().repo["hydra"]["launcher"]
    for name in [n for n in launchers if n.startswith("submitit")]:
        monkeypatch.delitem(launchers, name)
    result = satlab_in_process(["-m", "experiment=smoke", "hydra/launcher=submitit_slurm"], tmp_path)
    assert result.returncode == 2
    assert _error_lines(result.stderr) == [
        "satlab: error: hydra/launcher=submitit_slurm is Hydra's submitit launcher, which is not installed; install "
        "satlab's slurm extra: pip install -e '.[slurm]' in the clone (after make demo: "
        ".venv/bin/pip install -e '.[slurm]')"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sbatch, reason", [
    (None, 'Could not detect "srun", are you indeed on a slurm cluster?'),
    ("", "no sbatch on PATH"),
    ("echo 'sbatch: error: Unable to contact slurm controller (connect failure)' >&2; exit 1",
     "error: Unable to contact slurm controller (connect failure)"),
])
def test_a_sweep_slurm_cannot_take_is_one_line(sbatch, reason, tmp_path, monkeypatch, satlab_in_process):
    """The README's cluster line on a machine without SLURM (no srun; srun but no sbatch), or where sbatch reaches
    no controller (a fake sbatch here): one line naming the reason and what the launcher needs, exit 2, the sweep
    folder removed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = {} if sbatch is None else {"srun": "exit 0", "sbatch": sbatch} if sbatch else {"srun": "exit 0"}
    for tool, body in tools.items():
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    result = satlab_in_process(["-m", "experiment=smoke", f"paths.cache_dir={tmp_path / 'cache'}",
                                "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"], work,
                               env={"PATH": str(bin_dir)})
    assert result.returncode == 2, result.stderr
    assert _error_lines(result.stderr) == [
        f"satlab: error: hydra/launcher=submitit_slurm could not submit the jobs ({reason}); it needs a SLURM "
        "cluster: run the command where sbatch reaches the cluster's controller (a login node), or use "
        "hydra/launcher=submitit_local or no launcher on this machine"]
    assert [p for p in work.rglob("*") if p.is_file()] == [] and list((work / "multirun" / "sat").iterdir()) == []
