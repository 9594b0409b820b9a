"""The paper69 calibration: the sweep preset composes, and the report compares runs with the released matrix.

The report is tested end to end on a tiny digits multirun (3 briefly trained zoo models, 2 budgets), and on
fake runs cut from the released matrix itself, whose answers are known. Tests that need the released
SAT_release.csv skip when it is absent (it lives outside the repository).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from satlab.sat.records import read_matrix, write_matrix

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
sys.path.insert(0, str(REPO / "experiments" / "paper69"))
import calibration_report as report  # noqa: E402


@pytest.fixture(scope="module")
def reference() -> Path:
    path = report.default_reference()
    if not path.is_file():
        pytest.skip(f"the SAT paper's released SAT_release.csv is not at {path} (reference data outside the repo; "
                    "set SATLAB_SAT_REFERENCE)")
    return path


def test_calibration_preset_sweeps_eps_and_steps_on_paper_models():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=paper69_calibration", "dataset.root=/data/val"],
                      return_hydra_config=True)
        paper = compose("config", overrides=["experiment=paper69_imagenet", "dataset.root=/data/val"])
    params = cfg.hydra.sweeper.params
    eps = [float(v) * 255 for v in params["attack.eps"].split(",")]
    assert np.allclose(eps, [1, 2, 4, 8]) and params["attack.steps"] == "2,5,10"
    assert {"resnet50", "resnet101"} <= set(cfg.model_set.models) <= set(paper.model_set.models)
    families = {cfg.model_set.catalog[m].family for m in cfg.model_set.models}
    assert {"CNN", "NAS (CNN)", "Transformer", "Hybrid", "MLP-Mixer"} <= families
    assert cfg.dataset.samples_per_class == 1 and cfg.dataset.name == "imagenet"
    assert paper.attack.eps == pytest.approx(8 / 255) and paper.dataset.samples_per_class == 5
    text = (CONF / "experiment" / "paper69_imagenet.yaml").read_text()
    assert "NOT published" in text and "89.6-100 %" in text and "14.3 %" in text


def test_released_matrix_scale(reference):
    """The numbers the preset's comments quote, from the file."""
    names, sat = read_matrix(reference, symmetric_tol=1e-6)
    rates = np.exp(sat)
    assert len(names) == 69
    assert np.diagonal(rates).min() == pytest.approx(89.6, abs=0.05) and np.diagonal(rates).max() == pytest.approx(100)
    assert np.median(rates[np.triu_indices(69, 1)]) == pytest.approx(14.3, abs=0.05)
    assert rates[names.index("resnet50"), names.index("resnet101")] == pytest.approx(30.6, abs=0.05)


def _fake_run(root: Path, num: int, names: list[str], sat: np.ndarray, eps_255: int, steps: int) -> None:
    run = root / str(num)
    run.mkdir(parents=True)
    write_matrix(run / "sat_matrix.csv", names, sat)
    attack = {"name": "pgd_linf", "eps": eps_255 / 255, "steps": steps, "alpha": eps_255 / 255 / 4}
    (run / "summary.json").write_text(json.dumps({"attack": attack}))


def test_report_finds_the_released_scale(reference, tmp_path):
    """Runs cut from the released matrix: an exact copy scores 0; a copy with transfer / e does not."""
    names, sat = read_matrix(reference, symmetric_tol=1e-6)
    keep = [names.index(n) for n in ("resnet50", "resnet101", "convnext_tiny", "vit_small_patch16_224",
                                      "efficientnet_b2", "gmlp_s16_224")]
    sub_names, sub = [names[i] for i in keep], sat[np.ix_(keep, keep)]
    weaker = sub - 1.0
    np.fill_diagonal(weaker, np.diagonal(sub))
    _fake_run(tmp_path, 0, sub_names, weaker, 2, 5)
    _fake_run(tmp_path, 1, sub_names, sub, 4, 10)
    table = report.calibration_table(tmp_path, reference)
    best, other = table.iloc[0], table.iloc[1]
    assert best["run"] == "1" and best["eps_255"] == pytest.approx(4) and best["steps"] == 10
    assert best["score"] == 0 and best["spearman_pairs"] == pytest.approx(1) and best["median_abs_sat_diff"] == 0
    assert best["shared_models"] == 6 and best["pairs"] == best["ref_pairs"] == 15
    assert other["ks_transfer"] >= 0.5 and other["ks_whitebox"] == 0
    assert other["median_abs_sat_diff"] == pytest.approx(1)
    assert other["transfer_q50"] == pytest.approx(best["transfer_q50"] / math.e)


def test_report_end_to_end_on_a_tiny_digits_multirun(reference, tmp_path, satlab_in_process, capsys):
    """`satlab -m experiment=paper69_calibration` on digits, then the report script (both in this process).

    Three zoo models trained for 1 epoch on 20 digits a class (random models rarely share a correct image, which
    leaves X_AB empty and SAT undefined), 2 budgets, 100 images.
    """
    sweep = tmp_path / "multirun"
    done = satlab_in_process(
        ["-m", "experiment=paper69_calibration", "dataset=digits", "model_set=digits_zoo",
         "model_set.models=[resnet18_s0,convnext_atto,mixer_p4]", "model_set.train.epochs=1",
         "model_set.catalog.resnet18_s0.train.epochs=1", "dataset.samples_per_class=10", "dataset.train_per_class=20",
         "model_set.train.batch_size=32", "attack.eps=0.0627,0.1255", "attack.steps=2", "logger=none",
         "sat.num_workers=0", "sat.print_table=false", "trainer.enable_progress_bar=false",
         f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not a whole number of 8-bit levels" in done.stdout + done.stderr  # 0.0627 -> 16/255, said
    assert report.main([str(sweep), "--reference", str(reference)]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(sweep / "calibration.csv")
    assert sorted(table["eps_255"].round(6)) == [16, 32] and set(table["steps"]) == {2}  # the budgets used
    assert table["ks_transfer"].between(0, 1).all() and table["ks_whitebox"].between(0, 1).all()
    assert table["score"].is_monotonic_increasing
    for run, pairs in zip(table["run"], table["pairs"]):  # the pairs with a value (how many depends on training)
        names, sat = read_matrix(next(sweep.rglob(f"{run}/sat_matrix.csv")))
        assert pairs == np.isfinite(sat[np.triu_indices(len(names), 1)]).sum() >= 1
    assert (table["transfer_q90"] >= table["transfer_q10"]).all()
    assert (table["shared_models"] == 0).all() and (table["ref_pairs"] == 69 * 68 // 2).all()
    ref_names, ref_sat = read_matrix(reference, symmetric_tol=1e-6)
    assert table["ref_transfer_q50"].iloc[0] == pytest.approx(np.median(np.exp(ref_sat[np.triu_indices(69, 1)])))
    text = (sweep / "calibration.md").read_text()
    assert f"Closest (lowest KS(transfer) + KS(white-box)): run {table['run'].iloc[0]}" in text and text in printed


def test_report_without_reference_or_runs_says_what_to_do(tmp_path, capsys):
    assert report.main([str(tmp_path), "--reference", str(tmp_path / "missing.csv")]) == 2
    assert "the released matrix is not at" in capsys.readouterr().err
    (tmp_path / "ref.csv").write_text(",a,b\na,4.6,1\nb,1,4.6\n")
    assert report.main([str(tmp_path), "--reference", str(tmp_path / "ref.csv")]) == 2
    assert "no run with sat_matrix.csv and summary.json" in capsys.readouterr().err
