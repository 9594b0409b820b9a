"""The SAT engine: identical to the pair-by-pair definition, one attack per source, resumable from its cache."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from satlab.attacks import create_attack
from satlab.data.digits import digits
from satlab.models.specs import model_specs
from satlab.train.zoo import ZooSource
from satlab.sat import metric
from satlab.models import ModelSet
from satlab.sat.engine import compute_records
from satlab.sat.reference import pairwise_records

CONF = Path(__file__).resolve().parents[1] / "conf"
QUIET = {"accelerator": "cpu", "enable_progress_bar": False, "logger": False,  # no lightning_logs/ in the cwd
         "enable_checkpointing": False}


def zoo_load(spec, data, recipe, cache, trainer):
    """A zoo model trained (or loaded from the cache) as a model set would."""
    return ZooSource(spec, data, recipe, cache, trainer).load()


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """experiment=smoke's models (model_set=digits_tiny: timm's tiny architectures briefly trained on digits, so
    X_AB is not trivial), trained once into SATLAB_CACHE_DIR (shared with test_cli's smoke run) or a temp dir,
    and a small eval subset."""
    data = digits(samples_per_class=5)
    cache = os.environ.get("SATLAB_CACHE_DIR") or str(tmp_path_factory.mktemp("zoo"))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        model_set = compose("config", overrides=["model_set=digits_tiny"]).model_set
    specs = model_specs(model_set)
    models = [zoo_load(s, data, model_set.train, cache, QUIET)[0] for s in specs]
    return data, specs, models


def test_engine_equals_pairwise_reference(tiny_setup):
    data, specs, models = tiny_setup
    names = [s.name for s in specs]
    attack = create_attack("pgd_linf", eps=16 / 255, steps=3)
    result = compute_records(ModelSet.from_models(names, models), data.eval, attack,
                             batch_size=16, trainer_cfg=QUIET)
    ref = pairwise_records(models, names, data.eval, attack, batch_size=16)
    rec = result.records
    assert (rec.correct == ref.correct).all()
    assert rec.correct.sum() > 0 and metric.joint_correct(rec.correct)[~np.eye(4, dtype=bool)].min() > 0
    assert (rec.fooled == ref.fooled).all()
    np.testing.assert_array_equal(metric.sat_matrix(rec.correct, rec.fooled),
                                  metric.sat_matrix(ref.correct, ref.fooled))
    # outside X_AB nothing is marked fooled
    both = rec.correct[:, None, :] & rec.correct[None, :, :]
    assert not (rec.fooled & ~both).any()


def test_one_attack_per_source_only_on_correct_images(tiny_setup):
    data, specs, models = tiny_setup
    names = [s.name for s in specs]
    calls: list[tuple[int, int]] = []
    attack = create_attack("fgsm", eps=16 / 255)

    class Counting:
        name, describe = attack.name, attack.describe

        def __call__(self, model, x, y, seeds):
            calls.append((id(model), len(x)))
            return attack(model, x, y, seeds)

    rec = compute_records(ModelSet.from_models(names, models), data.eval, Counting(),
                          batch_size=len(data.eval), trainer_cfg=QUIET).records
    # one batch holds every sample: exactly one attack call per source, on the images it gets right
    assert [n for _, n in calls] == rec.correct.sum(axis=1).tolist()
    assert [m for m, _ in calls] == [id(m) for m in models]


def test_resume_reuses_cached_source_rows(tiny_setup, tmp_path):
    data, specs, models = tiny_setup
    names = [s.name for s in specs]
    keys = [m.fingerprint() for m in models]
    attack = create_attack("pgd_linf", eps=16 / 255, steps=2)
    first = compute_records(ModelSet.from_models(names, models), data.eval, attack, cache_dir=tmp_path, trainer_cfg=QUIET)
    assert first.reused == [] and first.computed == names and len(list((tmp_path / "records").glob("*.npz"))) == 4
    again = compute_records(ModelSet.from_models(names, models), data.eval, attack, cache_dir=tmp_path, trainer_cfg=QUIET)
    assert again.reused == names and again.computed == []
    assert (again.records.fooled == first.records.fooled).all()
    # another attack budget is another key: nothing reused
    other = create_attack("pgd_linf", eps=8 / 255, steps=2)
    third = compute_records(ModelSet.from_models(names, models), data.eval, other, cache_dir=tmp_path, trainer_cfg=QUIET)
    assert third.reused == []


def test_engine_does_not_touch_model_weights(tiny_setup):
    data, specs, models = tiny_setup
    before = [p.detach().clone() for p in models[0].parameters()]
    compute_records(ModelSet.from_models([s.name for s in specs[:2]], models[:2]), data.eval,
                    create_attack("pgd_linf", eps=8 / 255, steps=2), trainer_cfg=QUIET)
    assert all(torch.equal(a, b) for a, b in zip(before, models[0].parameters()))
    assert all(p.grad is None for p in models[0].parameters())
