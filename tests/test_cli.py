"""The `satlab` command: every config composes, tiny end-to-end runs write every output, bad input fails cleanly."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hydra import compose, initialize_config_dir

from satlab.cli import run
from satlab.sat import metric
from satlab.sat.records import load_records, read_matrix
from satlab.utils import SatlabError

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


def satlab_cli(args, tmp_path, cwd=None):
    env = {**os.environ, "SATLAB_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "satlab.cli", *args], capture_output=True, text=True,
                          cwd=cwd or tmp_path, env=env, timeout=600)


@pytest.mark.parametrize("group", ["dataset", "model_set", "attack", "task", "logger", "trainer"])
def test_every_config_option_composes(group, tmp_path):
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert options, f"no options in conf/{group}"
    for option in options:
        cfg = compose_cfg([f"{group}={option}"], tmp_path)
        assert cfg[group] is not None



def test_experiment_presets(tmp_path):
    assert sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")) == ["paper69_imagenet", "smoke"]
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


def test_cli_imagefolder_fgsm_and_sweep(tiny_imagefolder, tmp_path):
    common = ["model_set=timm_tiny", "dataset=imagefolder", f"dataset.root={tiny_imagefolder}",
              "dataset.resize=32", "dataset.resolution=32", *FAST]
    done = satlab_cli([*common, "attack=fgsm", "hydra.run.dir=run"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in OUTPUTS:
        assert (tmp_path / "run" / name).is_file(), name
    sweep = satlab_cli(["-m", *common, "attack.eps=0.03,0.1", "hydra.sweep.dir=sweep"], tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    eps = [json.loads((tmp_path / "sweep" / str(i) / "summary.json").read_text())["attack"]["eps"] for i in (0, 1)]
    assert eps == [8 / 255, 26 / 255]  # the budgets used: 0.03 and 0.1 snapped to whole 8-bit levels


def _assert_clean_failure(done, *needles):
    assert done.returncode != 0
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("satlab: error:"), done.stderr[-1500:]
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def test_cli_bad_input_one_line_and_no_results(tmp_path):
    done = satlab_cli(["model_set=timm_tiny", "model_set.models=[test_resnet,resnet5]", *FAST,
                       "hydra.run.dir=run"], tmp_path)
    _assert_clean_failure(done, "resnet5", "did you mean")
    assert not any((tmp_path / "run" / name).exists() for name in OUTPUTS)
    done = satlab_cli(["model_set=timm_tiny", "attack.eps=-0.1", *FAST, "hydra.run.dir=run2"], tmp_path)
    _assert_clean_failure(done, "attack.eps")
    assert not any((tmp_path / "run2" / name).exists() for name in OUTPUTS)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["dataset=imagefolder", "dataset.root=/no/such/folder"], "/no/such/folder"),
        (["dataset=imagefolder"], "dataset.root"),
        (["model_set.models=[]"], "at least 2"),
        (["model_set.models=[test_resnet]"], "at least 2"),
        (["model_set.models=[test_resnet,test_resnet]"], "more than once"),
        (["attack.steps=0"], "attack.steps"),
        (["sat.eps_s=0"], "eps_s"),
    ],
)
def test_bad_input_raises_satlab_error(overrides, needle, tmp_path):
    cfg = compose_cfg(["model_set=timm_tiny", *overrides], tmp_path)
    with pytest.raises(SatlabError, match=needle.replace("[", r"\[")):
        run(cfg)
    assert not any((tmp_path / "out" / name).exists() for name in OUTPUTS)


def test_class_count_mismatch_checkpoint(tmp_path):
    seven = timm.create_model("test_resnet", num_classes=7)
    torch.save(seven.state_dict(), tmp_path / "seven.pth")
    cfg = compose_cfg(["model_set=timm_tiny", f"+model_set.catalog.test_resnet.checkpoint_path={tmp_path / 'seven.pth'}"],
                      tmp_path)
    with pytest.raises(SatlabError, match="10 classes"):
        run(cfg)


def test_pretrained_class_count_mismatch_is_caught_before_any_download(tmp_path):
    cfg = compose_cfg([], tmp_path)
    cfg.model_set = compose_cfg(["model_set=paper69"], tmp_path).model_set
    cfg.model_set.models = ["resnet50", "vit_small_patch16_224"]
    with pytest.raises(SatlabError, match="predicts 1000 classes but the dataset has 10"):
        run(cfg)
