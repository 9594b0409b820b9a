"""Distillation: the loss by hand, frozen teachers, shared seeds / data order, a tiny task=distill, bad input."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from torch import nn

import satlab.train.fit as fit
from satlab.cli import run
from satlab.data.common import balanced_subset
from satlab.data.digits import digits
from satlab.models.factory import build_model
from satlab.models.specs import ModelSpec
from satlab.train import Recipe
from satlab.train.distill import DistillModule, distill_loss, student_training
from satlab.train.distill_results import paired_gain, rank_correlation
from satlab.utils import SatlabError, state_dict_hash

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"accelerator": "cpu", "enable_progress_bar": False}
TINY = Recipe.from_config({"epochs": 1, "batch_size": 16})
OUTPUTS = ("distill_results.csv", "gain_vs_sat.png", "report.md", "summary.json")
FAST = ["logger=none", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "task=distill",
        "model_set=timm_tiny", "attack=fgsm", "dataset.samples_per_class=3", "dataset.train_per_class=20",
        "distill.student=test_resnet",
        "distill.recipe.epochs=1", "distill.recipe.batch_size=32", "distill.n_boot=200"]


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_loss_equals_hand_computation():
    s = np.array([[2.0, -1.0, 0.5], [0.1, 0.3, -2.0]])
    t = np.array([[1.0, 0.0, 3.0], [-1.0, 2.0, 0.0]])
    y = np.array([0, 1])
    alpha, temp = 0.3, 2.5
    ce = -np.mean(np.log(softmax(s)[np.arange(2), y]))
    ps, pt = softmax(s / temp), softmax(t / temp)
    kl = np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), 1))
    expected = (1 - alpha) * ce + alpha * temp**2 * kl
    got = distill_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha, temp)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    hard = (1 - alpha) * ce - alpha * np.mean(np.log(softmax(s)[np.arange(2), t.argmax(1)]))
    got = distill_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha, temp, mode="hard")
    assert got.item() == pytest.approx(hard, rel=1e-10)
    assert distill_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), 0.0, temp).item() == pytest.approx(ce)


def test_gain_interval_and_rank_correlation():
    mean, lo, hi = paired_gain([0.5, 0.6, 0.7], [0.6, 0.65, 0.8])
    diff = np.array([0.1, 0.05, 0.1])
    half = 4.302652729911275 * diff.std(ddof=1) / np.sqrt(3)  # t(0.975, df=2)
    assert (mean, lo, hi) == pytest.approx((diff.mean(), diff.mean() - half, diff.mean() + half))
    corr = rank_correlation([1, 2, 3, 4, 5], [2, 4, 6, 8, 10], n_boot=200)
    assert corr["rho"] == pytest.approx(1.0) and corr["ci_low"] == pytest.approx(1.0)
    corr = rank_correlation([1, 2, 3, 4, 5], [10, 8, 6, 4, 2], n_boot=200)
    assert corr["rho"] == pytest.approx(-1.0) and corr["n"] == 5


@pytest.fixture(scope="module")
def data():
    full = digits(samples_per_class=3)
    return replace(full, train=balanced_subset(full.train, 10))  # 100 training images: enough batches to compare


class Teacher(nn.Module):
    """A small teacher with batch norm and dropout, so eval vs train mode changes its output and buffers."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.BatchNorm1d(16), nn.Dropout(0.5),
                                 nn.Linear(16, 10))
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.net(x)

    def fingerprint(self):
        return state_dict_hash(self.state_dict())


class Recorder:
    """Trainer callback: initial student weights and, per training batch, the sample ids and pixel sums."""

    def __init__(self):
        from pytorch_lightning import Callback

        outer = self

        class _CB(Callback):
            def on_train_start(self, trainer, module):
                outer.start = state_dict_hash(module.net.state_dict())

            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                outer.batches.append((batch[2].tolist(), round(float(batch[0].sum()), 4)))

        self.callback, self.batches, self.start = _CB(), [], None


def test_teacher_frozen_in_eval_and_shares_seed_and_data_order(data, tmp_path, monkeypatch, one_thread):
    recorders = []
    build_trainer = fit.build_trainer

    def recording_trainer(cfg, **options):
        trainer = build_trainer(cfg, **options)
        recorders.append(Recorder())
        trainer.callbacks.append(recorders[-1].callback)
        return trainer

    monkeypatch.setattr(fit, "build_trainer", recording_trainer)
    spec = ModelSpec(name="student", timm_name="test_resnet")
    build = lambda: build_model(spec, 10, 32, seed=3).train()  # noqa: E731
    teacher = Teacher().eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    common = ("student", TINY, data, tmp_path, {**QUIET, "max_epochs": 2}, 7, {"arch": "test_resnet"})
    _, base = student_training(build, *common).run()
    _, dist = student_training(build, *common, teachers=[teacher], alpha=0.7, temperature=3.0).run()
    assert base["key"] != dist["key"]
    # the teacher ran on every training batch, in eval mode, and neither its weights nor BN statistics changed
    assert len(teacher.modes) >= len(recorders[1].batches) > 2
    assert not any(teacher.modes)
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    # baseline and distilled student: same initial weights, same batches (ids and augmented pixels), both epochs
    assert recorders[0].start == recorders[1].start
    assert recorders[0].batches == recorders[1].batches
    # cached: the second call trains nothing
    _, again = student_training(build, *common, teachers=[teacher], alpha=0.7, temperature=3.0).run()
    assert again["cached"] and again["key"] == dist["key"] and len(recorders) == 2
    _, other = student_training(build, *common, teachers=[teacher], alpha=0.7, temperature=2.0).run()
    assert other["key"] != dist["key"]


def test_module_rejects_bad_settings():
    net = nn.Linear(2, 2)
    with pytest.raises(SatlabError, match="alpha"):
        DistillModule(net, torch.optim.SGD, 2, teachers=[nn.Linear(2, 2)], alpha=1.5)
    with pytest.raises(SatlabError, match="temperature"):
        DistillModule(net, torch.optim.SGD, 2, teachers=[nn.Linear(2, 2)], temperature=0)
    with pytest.raises(SatlabError, match="mode"):
        DistillModule(net, torch.optim.SGD, 2, teachers=[nn.Linear(2, 2)], mode="medium")


def compose_cfg(overrides, tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*FAST, f"paths.output_dir={tmp_path / 'out'}",
                                            f"paths.cache_dir={tmp_path / 'cache'}", *overrides])


def test_tiny_distill_run_end_to_end(tmp_path, one_thread):
    cfg = compose_cfg(["distill.teachers=[test_vit,test_convnext]", "distill.seeds=[0,1]"], tmp_path)
    summary = run(cfg)
    out = tmp_path / "out"
    assert all((out / name).is_file() for name in OUTPUTS)
    table = pd.read_csv(out / "distill_results.csv")
    assert list(table["teacher"]) == ["test_vit", "test_convnext"]
    assert (table["seeds"] == 2).all()
    base = np.array(summary["baseline_accuracy"])
    for _, row in table.iterrows():
        accs = np.array(summary["student_accuracy"][row["teacher"]])
        assert row["student_accuracy_mean"] == pytest.approx(accs.mean())
        assert row["gain_mean"] == pytest.approx(100 * (accs - base).mean())
    assert "## Distillation into test_resnet" in (out / "report.md").read_text()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["task"] == "distill" and saved["reference"].startswith("test_resnet trained without a teacher")
    assert len(saved["runs"]) == 2 * 3  # per seed: the baseline and one student per teacher
    # a second run with one teacher trains nothing: every student comes from the cache
    # and with the SAT map given as a file, no attack runs and the SAT and teacher accuracy are the same
    records = list((tmp_path / "cache" / "records").iterdir())
    summary = run(compose_cfg(["distill.teacher=test_vit", "distill.seeds=[0,1]", f"distill.sat_matrix={out / 'sat_matrix.csv'}",
                               f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path / "b"))
    assert all(r["cached"] for r in summary["runs"])
    again = pd.read_csv(tmp_path / "b" / "out" / "distill_results.csv")
    assert list(again["teacher"]) == ["test_vit"]
    np.testing.assert_allclose(again.iloc[0][["sat_to_student", "teacher_accuracy", "gain_mean"]].astype(float),
                               table.iloc[0][["sat_to_student", "teacher_accuracy", "gain_mean"]].astype(float),
                               equal_nan=True)
    assert sorted(records) == sorted((tmp_path / "cache" / "records").iterdir())


@pytest.mark.parametrize("overrides, needle", [
    (["distill.alpha=1.5"], "distill.alpha"),
    (["distill.alpha=-0.1"], "distill.alpha"),
    (["distill.temperature=0"], "distill.temperature"),
    (["distill.student=resnet_nope", "model_set.uncatalogued=random"], "unknown model 'resnet_nope'"),
    (["distill.student=resnet_nope"], "not in the catalog"),
    (["distill.teachers=[test_resnet]"], "is the student"),
    (["distill.seeds=[0,0]"], "distinct"),
])
def test_bad_input_raises_before_work(overrides, needle, tmp_path):
    with pytest.raises(SatlabError, match=needle):
        run(compose_cfg(overrides, tmp_path))
    assert not any((tmp_path / "out" / name).exists() for name in OUTPUTS)
    assert not (tmp_path / "cache").exists()


def test_teacher_with_other_class_count(tmp_path):
    seven = timm.create_model("test_vit", num_classes=7)
    torch.save(seven.state_dict(), tmp_path / "seven.pth")
    cfg = compose_cfg(["distill.teacher=test_vit", f"+model_set.catalog.test_vit.checkpoint_path={tmp_path / 'seven.pth'}"],
                      tmp_path)
    with pytest.raises(SatlabError, match="10 classes"):
        run(cfg)
    assert not any((tmp_path / "out" / name).exists() for name in OUTPUTS)


def test_cli_bad_alpha_one_line_exit_2(tmp_path, satlab_in_process):
    done = satlab_in_process([*FAST, "distill.alpha=2", "hydra.run.dir=run"], tmp_path,
                             {"SATLAB_CACHE_DIR": str(tmp_path / "cache")})
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    assert done.returncode == 2 and lines[-1].startswith("satlab: error: distill.alpha"), done.stderr[-800:]
    assert "Traceback" not in done.stderr
    assert not any((tmp_path / "run" / name).exists() for name in OUTPUTS)


def test_presets_compose():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        digits_cfg = compose("config", overrides=["experiment=distill_digits"])
        paper = compose("config", overrides=["experiment=paper_distill", "dataset.root=/data/flowers"])
    assert (digits_cfg.task.name, digits_cfg.dataset.name, digits_cfg.distill.student) == ("distill", "digits", "resnet18_s0")
    assert len(list(digits_cfg.distill.seeds)) >= 3 and digits_cfg.distill.teachers is None  # the other 8 zoo models
    assert paper.dataset.name == "flowers102" and list(paper.dataset.train_splits) == ["train", "val"]
    assert set(paper.distill.teachers) <= set(paper.model_set.models) and paper.distill.student == "resnet18"
