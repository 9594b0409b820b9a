"""Fine-tuning end to end (tiny): task=train -> task=sat with model_set.trained_from, Flowers-102 in torchvision's
layout through experiment=paper69_flowers (random-init tiny timm models instead of pretrained weights), and the
bad inputs of training (one error line, exit 2, no result file)."""

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from satlab.cli import run
from satlab.data.shapes import CLASSES, MIN_CONTRAST, TEXTURE, colours, draw_shape, luminance, shapes
from satlab.utils import SatlabError, state_dict_hash

CONF = Path(__file__).resolve().parents[1] / "conf"
ROOT = Path(__file__).resolve().parents[1]
FAST = ["logger=none", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]
TINY_SHAPES = ["dataset=shapes", "dataset.train_per_class=4", "dataset.test_per_class=2"]
MODELS = ["model_set=timm_tiny", "model_set.models=[test_resnet,test_convnext,test_vit]"]
TINY_TRAIN = ["train.recipe.epochs=1", "train.recipe.batch_size=4", *MODELS]


def config(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[*FAST, *overrides])


def test_shapes_dataset_is_deterministic_and_balanced():
    a, b = shapes(train_per_class=3, test_per_class=2), shapes(train_per_class=3, test_per_class=2)
    assert len(a.train) == 30 and len(a.eval) == 20 and a.num_classes == len(CLASSES) >= 10
    assert np.array_equal(a.train.images.numpy(), b.train.images.numpy())
    assert not set(a.train.ids.tolist()) & set(a.eval.ids.tolist())
    assert np.bincount(a.eval.labels).tolist() == [2] * 10
    other = shapes(train_per_class=3, test_per_class=2, seed=1)
    assert not np.array_equal(a.train.images.numpy(), other.train.images.numpy())


def test_shapes_are_visible_on_their_background():
    """Every shape differs from its background colour by at least MIN_CONTRAST in luminance (the class is visible)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        background, shape = colours(rng)
        assert abs(luminance(shape) - luminance(background)) >= MIN_CONTRAST
    for k in range(20):  # filled circles: pixels inside the shape vs the (faintly textured) background
        img = draw_shape(0, np.random.default_rng([0, 0, k]), 32).astype(float)
        lum = np.tensordot((0.299, 0.587, 0.114), img, axes=1) / 255
        assert np.ptp(lum) >= MIN_CONTRAST - TEXTURE / 255


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("ft")
    cache = tmp / "cache"
    summary = run(config("task=train", *TINY_SHAPES, *TINY_TRAIN, f"paths.output_dir={tmp / 'train'}",
                         f"paths.cache_dir={cache}"))
    return tmp, cache, summary


def test_tiny_fine_tune_end_to_end(trained):
    tmp, cache, summary = trained
    manifest = json.loads((tmp / "train" / "trained_models.json").read_text())
    assert manifest["num_classes"] == 10 and set(manifest["models"]) == {"test_resnet", "test_convnext", "test_vit"}
    assert all(not m["cached"] and Path(m["weights"]).is_file() for m in manifest["models"].values())
    out = tmp / "sat"
    sat = run(config("task=sat", "attack=fgsm", *TINY_SHAPES, *MODELS, f"model_set.trained_from={tmp / 'train'}",
                     f"paths.output_dir={out}", f"paths.cache_dir={cache}"))
    assert (out / "sat_matrix.csv").is_file() and sat["zoo"]["test_vit"]["fingerprint"] == \
        manifest["models"]["test_vit"]["fingerprint"]
    for name, acc in sat["clean_accuracy"].items():  # the SAT run's clean pass equals training's final eval
        assert acc == pytest.approx(manifest["models"][name]["test_accuracy"], abs=1e-4), name
    again = run(config("task=train", *TINY_SHAPES, *TINY_TRAIN, f"paths.output_dir={tmp / 'again'}",
                       f"paths.cache_dir={cache}"))
    assert all(m["cached"] for m in again["models"].values())
    head = run(config("task=train", "train.mode=head", *TINY_SHAPES, *TINY_TRAIN, f"paths.output_dir={tmp / 'head'}",
                      f"paths.cache_dir={cache}"))
    assert {m["key"] for m in head["models"].values()}.isdisjoint({m["key"] for m in again["models"].values()})


def test_every_task_takes_the_fine_tuned_models(trained):
    """model_set.trained_from reaches every task that takes models: each scores (or starts from) the weights the
    task=train run fine-tuned, identified by the manifest's content keys."""
    tmp, cache, _ = trained
    manifest = json.loads((tmp / "train" / "trained_models.json").read_text())
    fine_tuned = {name: entry["fingerprint"] for name, entry in manifest["models"].items()}
    common = [*TINY_SHAPES, *MODELS, f"model_set.trained_from={tmp / 'train'}", f"paths.cache_dir={cache}"]
    ens = run(config("task=ensemble", "attack=fgsm", "ensemble.team_sizes=[2]", "ensemble.random_teams=2",
                     "ensemble.n_bootstrap=10", "ensemble.n_permutations=10", *common,
                     f"paths.output_dir={tmp / 'ensemble'}"))
    assert ens["model_keys"] == fine_tuned
    for name, acc in ens["accuracy"].items():  # the prediction pass scored the fine-tuned weights
        assert acc == pytest.approx(manifest["models"][name]["test_accuracy"], abs=1e-4), name
    dist = run(config("task=distill", "attack=fgsm", "distill.student=test_resnet", "distill.teachers=[test_vit]",
                      "distill.seeds=[0]", "distill.recipe.epochs=1", "distill.recipe.batch_size=4",
                      "distill.n_boot=10", *common, f"paths.output_dir={tmp / 'distill'}"))
    assert dist["model_keys"] == {"test_vit": fine_tuned["test_vit"]}
    again = run(config("task=train", *TINY_SHAPES, *TINY_TRAIN, f"model_set.trained_from={tmp / 'train'}",
                       f"paths.output_dir={tmp / 'train2'}", f"paths.cache_dir={cache}"))
    for name, entry in again["models"].items():  # fine-tuned again, starting from the first run's weights
        assert entry["source_weights"] == state_dict_hash(load_file(manifest["models"][name]["weights"])), name


def test_flowers_fine_tune_on_a_generated_tree(tiny_flowers102, tmp_path, one_thread):
    summary = run(config(
        "experiment=paper69_flowers", "model_set=timm_tiny", "model_set.models=[test_resnet,test_convnext]",
        "attack=fgsm", f"dataset.root={tiny_flowers102}", "dataset.resize=32", "dataset.resolution=32",
        "dataset.samples_per_class=2", "train.recipe.epochs=1", "train.recipe.batch_size=2",
        "train.recipe.num_workers=0", "sat.num_workers=0", "logger=none",
        f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"))
    manifest = json.loads((tmp_path / "run" / "train" / "trained_models.json").read_text())
    assert manifest["num_classes"] == 102 and manifest["dataset"] == "flowers102"
    train = json.loads((tmp_path / "run" / "train" / "summary.json").read_text())
    assert train["config"]["dataset"]["train_splits"] == ["train", "val"]
    records = np.load(tmp_path / "run" / "target" / "records.npz")
    assert sorted(records["sample_ids"].tolist()) == [2, 3, 6, 7, 10, 11]  # tstid images 3,4,7,8,11,12 (id = n-1)
    assert summary is not None and (tmp_path / "run" / "target" / "sat_matrix.csv").is_file()
    with pytest.raises(SatlabError, match="trained for 102 classes"):  # class-count mismatch: flowers models on shapes
        run(config("task=sat", "attack=fgsm", *TINY_SHAPES, "model_set=timm_tiny",
                   "model_set.models=[test_resnet,test_convnext]", f"model_set.trained_from={tmp_path / 'run' / 'train'}",
                   f"paths.output_dir={tmp_path / 'bad'}", f"paths.cache_dir={tmp_path / 'cache'}"))
    assert not (tmp_path / "bad" / "summary.json").exists()


def test_empty_train_split_is_one_error_line(tmp_path, satlab_in_process):
    out = tmp_path / "out"
    proc = satlab_in_process(["task=train", *FAST, *TINY_TRAIN, "dataset=shapes", "dataset.train_per_class=0",
                              f"paths.output_dir={out}", f"paths.cache_dir={tmp_path}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith("satlab: error:") and "empty train split" in lines[-1]
    assert not (out / "trained_models.json").exists() and not (out / "summary.json").exists()
