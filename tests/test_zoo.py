"""The main job end to end on a part of the digits zoo: train (or load) it, compute its SAT matrix, analyse it.

Four of the nine zoo models, with the zoo's own recipes: both ResNet-18 seeds, ConvNeXt and the MLP-Mixer. The
ResNets at 1/8 width (the default zoo's are full width and take about 80 s each to train), all trained on 30
digits a class (300 images) so that the suite stays short; cached in SATLAB_CACHE_DIR (CI: .cache/satlab in the
clone, else a pytest temp dir). What the full zoo reaches is documented from `make demo` in
experiments/digits_zoo/README.md; here only what holds on any machine is asserted (the models learn; the records
agree with the matrix and the analyses), never what training happens to reach.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from satlab.analysis.consistency import kappa_matrix
from satlab.cli import run
from satlab.sat import metric
from satlab.sat.records import load_records, read_matrix

CONF = Path(__file__).resolve().parents[1] / "conf"
MODELS = ["resnet18_s0", "resnet18_s1", "convnext_atto", "mixer_p4"]
SAME_ARCH = ("resnet18_s0", "resnet18_s1")


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    cache = os.environ.get("SATLAB_CACHE_DIR") or str(tmp_path_factory.mktemp("cache"))
    out = tmp_path_factory.mktemp("sat")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["logger=none", "trainer.enable_progress_bar=false",
                                           f"model_set.models=[{','.join(MODELS)}]", "dataset.samples_per_class=10",
                                           "dataset.train_per_class=30",  # 300 training digits: fast to train
                                           "model_set.train.batch_size=16",  # and enough steps on them
                                           *[f"model_set.catalog.{m}.model_args.channels=[8,16,32,64]" for m in SAME_ARCH],
                                           f"paths.output_dir={out}", f"paths.cache_dir={cache}"])
    return out, run(cfg)


def test_default_zoo_is_diverse():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        zoo = compose("config").model_set
    families = {zoo.catalog[m].family for m in zoo.models}
    archs = [zoo.catalog[m].timm_name for m in zoo.models]
    assert len(archs) == 9 and len(set(archs)) >= 8 and len(families) >= 4
    assert len(archs) > len(set(archs)), "one architecture is trained twice, with different seeds"
    assert set(MODELS) <= set(zoo.models)


def test_zoo_models_learn(zoo_run):
    _, summary = zoo_run
    assert sorted(summary["zoo"]) == sorted(MODELS) and summary["models"] == MODELS
    for name, info in summary["zoo"].items():
        assert info["test_accuracy"] >= 0.5, (name, info["test_accuracy"])  # learnt (chance: 0.1); on 360 images
    assert min(summary["clean_accuracy"].values()) >= 0.5 and summary["samples"] == 100


def test_default_budget_is_strong_white_box_and_partial_transfer(zoo_run):
    """Observed (4 models, 100 images): white-box 100%, mean transfer 12.3%, directed rates 2-32%. The bounds are
    wide on purpose (what training reaches differs between machines): a broken attack (noise-like) transfers
    ~0% and is weak white-box; a mix-up of sources and targets breaks the records' own consistency. Where the
    seed twins rank is reported (summary `structure`), not asserted: it is what training happens to reach."""
    out, summary = zoo_run
    assert min(summary["whitebox_success"].values()) >= 80.0
    rec = load_records(out / "records.npz")
    assert list(rec.models) == MODELS
    rates = metric.transfer_rates(rec.correct, rec.fooled)
    off = rates[~np.eye(len(rates), dtype=bool)]
    assert 0.5 < off.mean() < 60.0, off
    names, sat = read_matrix(out / "sat_matrix.csv", symmetric_tol=1e-9)
    np.testing.assert_allclose(sat, metric.sat_matrix(rec.correct, rec.fooled), rtol=1e-9)
    np.testing.assert_allclose(np.diagonal(sat), np.log(np.diagonal(rates)), atol=1e-9)  # SAT(A, A) = ln white-box
    assert np.array_equal(sat, sat.T)
    twins = summary["structure"]["twins_rank"]
    assert [t[:2] for t in twins] == [list(SAME_ARCH)] and 1 <= twins[0][2] <= 6  # found and ranked among 6 pairs


def test_analysis_of_the_run(zoo_run, tmp_path):
    """Invariants only: what training reaches differs between machines (a model may be 100% correct on the 100
    images, which once made its kappa row NaN), so nothing here depends on the accuracies."""
    out, _ = zoo_run
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["task=analyze", "logger=none", f"paths.output_dir={tmp_path}",
                                           f"analyze.matrix={out / 'sat_matrix.csv'}", "analyze.importance_seeds=2"])
    run(cfg)
    for name in ("component_importance.csv", "clusters.csv", "kappa_matrix.csv", "report.md", "summary.json",
                 "clusters_heatmap.png", "model_map.png", "importance.png"):
        assert (tmp_path / name).is_file(), name
    kappa_names, kappa = read_matrix(tmp_path / "kappa_matrix.csv")
    assert kappa_names == MODELS
    assert (np.diagonal(kappa) == 1.0).all() and np.array_equal(kappa, kappa.T)  # kappa(A, A) = 1 by definition
    assert np.isfinite(kappa).all() and (np.abs(kappa) <= 1.0 + 1e-12).all()
    rec = load_records(out / "records.npz")  # the written matrix is the kappa of the run's own records
    np.testing.assert_allclose(kappa, kappa_matrix(rec.correct[[list(rec.models).index(m) for m in MODELS]]),
                               rtol=1e-9, atol=1e-12)
