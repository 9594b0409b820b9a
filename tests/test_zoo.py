"""The main job end to end: train (or load) the digits zoo, compute its SAT matrix, analyse it.

The zoo is trained once (about 2-3 minutes on 2 cores) into SATLAB_CACHE_DIR (CI: .cache/satlab in the clone,
else a pytest temp dir) and loaded from there afterwards.
"""

import math
import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from satlab.cli import run
from satlab.sat import metric
from satlab.sat.records import load_records, read_matrix

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    cache = os.environ.get("SATLAB_CACHE_DIR") or str(tmp_path_factory.mktemp("cache"))
    out = tmp_path_factory.mktemp("sat")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["logger=none", "trainer.enable_progress_bar=false",
                                           f"paths.output_dir={out}", f"paths.cache_dir={cache}"])
    return out, run(cfg)


def test_zoo_is_diverse_and_accurate(zoo_run):
    out, summary = zoo_run
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        zoo = compose("config").model_set
    families = {zoo.catalog[m].family for m in zoo.models}
    archs = [zoo.catalog[m].timm_name for m in zoo.models]
    assert len(set(archs)) >= 8 and len(families) >= 4
    assert len(archs) > len(set(archs)), "one architecture is trained twice, with different seeds"
    for name, info in summary["zoo"].items():
        assert info["test_accuracy"] >= 0.90, (name, info["test_accuracy"])
    assert min(summary["clean_accuracy"].values()) >= 0.90


def test_default_budget_is_strong_white_box_and_partial_transfer(zoo_run):
    out, summary = zoo_run
    assert min(summary["whitebox_success"].values()) >= 90.0
    rec = load_records(out / "records.npz")
    rates = metric.transfer_rates(rec.correct, rec.fooled)
    off = rates[~np.eye(len(rates), dtype=bool)]
    assert 1.0 < off.mean() < 90.0 and off.max() < 99.0  # transfer neither ~0 % nor ~100 %
    names, sat = read_matrix(out / "sat_matrix.csv", symmetric_tol=1e-9)
    np.testing.assert_allclose(sat, metric.sat_matrix(rec.correct, rec.fooled), rtol=1e-9)
    assert (np.diagonal(sat) <= math.log(100) + 1e-9).all()


def test_analysis_of_the_default_run(zoo_run, tmp_path):
    out, _ = zoo_run
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["task=analyze", "logger=none", f"paths.output_dir={tmp_path}",
                                           f"analyze.matrix={out / 'sat_matrix.csv'}", "analyze.importance_seeds=2"])
    run(cfg)
    for name in ("component_importance.csv", "clusters.csv", "kappa_matrix.csv", "report.md", "summary.json",
                 "clusters_heatmap.png", "model_map.png", "importance.png"):
        assert (tmp_path / name).is_file(), name
    kappa_names, kappa = read_matrix(tmp_path / "kappa_matrix.csv")
    assert len(kappa_names) == 9 and np.allclose(np.diagonal(kappa), 1.0)
