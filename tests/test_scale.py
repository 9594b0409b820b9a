"""Maps past one machine: incremental maps from stored adversarial images, shards assembled from the cache,
bf16 autocast kept off the adversarial image. Tiny random-init timm models on 24 random 16-px images."""

import logging

import numpy as np
import pytest
import torch
from torch import nn

from satlab.attacks import create_attack
from satlab.data.common import TensorImages
from satlab.models.factory import build_model
from satlab.models.specs import ModelSpec
from satlab.sat.engine import assemble_records, compute_records
from satlab.sat.shards import select_sources
from satlab.utils import SatlabError

QUIET = {"accelerator": "cpu", "enable_progress_bar": False}
ATTACK = create_attack("pgd_linf", eps=8 / 255, steps=2)
ARCHS = ["test_resnet", "test_vit", "test_resnet", "test_vit", "test_resnet"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one intra-op thread (see conftest)."""


class Counted(nn.Module):
    """A model that logs its forward calls: (name, grad enabled, batch size)."""

    def __init__(self, model: nn.Module, name: str, calls: list) -> None:
        super().__init__()
        self.model, self.name, self.calls = model, name, calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.name, torch.is_grad_enabled(), len(x)))
        return self.model(x)


class CountedAttack:
    """ATTACK, logging which model each call attacks (same description, so the same cache keys)."""

    name, describe = ATTACK.name, ATTACK.describe

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def __call__(self, model, x, y, seeds):
        self.calls.append(model.name)
        return ATTACK(model, x, y, seeds)


@pytest.fixture(scope="module")
def zoo():
    """5 tiny models (names m0..m4), their content keys, and 24 random images of 3 classes."""
    models, keys = [], []
    for i, arch in enumerate(ARCHS):
        args = {"dynamic_img_size": True} if arch == "test_vit" else {}
        model = build_model(ModelSpec(f"m{i}", arch, model_args=args, input_size=16), 3, 16, seed=i)
        models.append(model)
        keys.append(model.fingerprint())
    gen = torch.Generator().manual_seed(0)
    data = TensorImages(torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8, generator=gen),
                        [i % 3 for i in range(24)], range(24))
    return models, keys, data


def run(zoo, k, cache=None, calls=None, sources=None, trainer=None, **kwargs):
    models, keys, data = zoo
    calls = [] if calls is None else calls
    wrapped = [Counted(m, f"m{i}", calls) for i, m in enumerate(models[:k])]
    return compute_records(wrapped, [f"m{i}" for i in range(k)], keys[:k], data, CountedAttack(calls), batch_size=64,
                           cache_dir=cache, trainer_cfg={**QUIET, **(trainer or {})}, sources=sources, **kwargs)


def cost(calls: list, steps: int) -> dict[str, tuple[int, int]]:
    """Per model: (attacks, no-grad forward calls) from a call log (one batch holds every image)."""
    out: dict[str, tuple[int, int]] = {}
    for name in {c if isinstance(c, str) else c[0] for c in calls}:
        grad = sum(1 for c in calls if isinstance(c, tuple) and c[0] == name and c[1])
        attacks = sum(1 for c in calls if c == name)
        assert grad == attacks * steps
        out[name] = (attacks, sum(1 for c in calls if isinstance(c, tuple) and c[0] == name and not c[1]))
    return out


def expected_cost(correct: np.ndarray, old: int) -> dict[str, tuple[int, int]]:
    """Adding models old..N-1 to a map of models 0..old-1: one attack per new model; forward passes: the clean
    pass (1 per model) plus one evaluation per NEW pair (source or target new) whose X_AB is not empty."""
    n = len(correct)
    evals = [sum(1 for s in range(n) if (s >= old or t >= old) and (correct[s] & correct[t]).any()) for t in range(n)]
    return {f"m{t}": (int(t >= old), 1 + evals[t]) for t in range(n)}


def test_adding_models_costs_their_attacks_and_new_pairs_only(zoo, tmp_path, caplog):
    first = run(zoo, 2, tmp_path, store_adversarial=True)
    assert first.computed == ["m0", "m1"] and len(list((tmp_path / "records").glob("*.adv.npy"))) == 2
    for old, new in ((2, 3), (3, 5)):  # add 1 model, then 2 more
        calls: list = []
        with caplog.at_level(logging.INFO):
            added = run(zoo, new, tmp_path, calls, store_adversarial=True)
        assert added.completed == [f"m{i}" for i in range(old)] and added.reused == []
        assert added.computed == [f"m{i}" for i in range(old, new)]
        correct = added.records.correct
        assert cost(calls, ATTACK.steps) == expected_cost(correct, old)
        assert sum(a for a, _ in cost(calls, ATTACK.steps).values()) == new - old
        full = run(zoo, new)  # recomputed from scratch, no cache
        assert np.array_equal(added.records.correct, full.records.correct)
        assert np.array_equal(added.records.fooled, full.records.fooled)
    assert added.records.fooled.any() and "evaluating them on its stored adversarial images" in caplog.text
    again = run(zoo, 5, tmp_path)  # every row now covers every target
    assert again.reused == [f"m{i}" for i in range(5)]


def test_without_stored_images_only_incomplete_rows_are_attacked_again(zoo, tmp_path, caplog):
    run(zoo, 2, tmp_path)
    calls: list = []
    with caplog.at_level(logging.INFO):
        added = run(zoo, 3, tmp_path, calls)
    assert added.computed == ["m0", "m1", "m2"] and added.completed == []
    assert sorted(c for c in calls if isinstance(c, str)) == ["m0", "m1", "m2"]
    assert "adversarial images were not stored; attacking it again" in caplog.text
    assert np.array_equal(added.records.fooled, run(zoo, 3).records.fooled)


def test_shards_then_assemble_equal_one_process(zoo, tmp_path):
    _, keys, data = zoo
    names = [f"m{i}" for i in range(3)]
    with pytest.raises(SatlabError, match="no complete cached row for 3 source"):
        assemble_records(names, keys[:3], data, ATTACK, tmp_path, trainer_cfg=QUIET)
    shard = run(zoo, 3, tmp_path, sources=select_sources(names, "0/2"))
    assert shard.records is None and shard.computed == ["m0", "m2"]
    with pytest.raises(SatlabError, match=r"source\(s\): m1 "):
        assemble_records(names, keys[:3], data, ATTACK, tmp_path, trainer_cfg=QUIET)
    assert run(zoo, 3, tmp_path, sources=select_sources(names, "1/2")).computed == ["m1"]
    assembled = assemble_records(names, keys[:3], data, ATTACK, tmp_path, trainer_cfg=QUIET)  # takes no models
    assert assembled.reused == names and assembled.computed == []
    one = run(zoo, 3).records
    for key in ("correct", "fooled", "sample_ids", "labels"):
        assert np.array_equal(getattr(assembled.records, key), getattr(one, key))


@pytest.mark.parametrize("shard,message", [
    ("2/2", "out of range"), ("-1/3", "out of range"), ("1/0", "out of range"), ("1-2", "must be 'i/n'"),
    ("0/4", "leave shards empty"), (["m0", "m0"], "more than once"), (["m9"], "not in the model set"),
])
def test_bad_shards_are_refused(shard, message):
    with pytest.raises(SatlabError, match=message):
        select_sources(["m0", "m1", "m2"], shard)


def test_shards_cover_every_source_once():
    names = [f"m{i}" for i in range(7)]
    parts = [select_sources(names, f"{i}/3") for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(names)


def test_bf16_autocast_keeps_adversarial_images_on_8bit_levels(zoo, tmp_path):
    plain = run(zoo, 2, tmp_path / "a")
    assert np.array_equal(plain.records.fooled, run(zoo, 2, amp=False).records.fooled)  # CPU default: off
    cast = run(zoo, 2, tmp_path / "a", amp=True, store_adversarial=True)  # stores only 8-bit images, else raises
    assert cast.reused == [] and cast.computed == ["m0", "m1"]  # another precision, another key
    assert len(list((tmp_path / "a" / "records").glob("*.adv.npy"))) == 2


def test_two_cpu_processes_split_the_sources_and_equal_one(zoo, tmp_path):
    two = run(zoo, 3, tmp_path, trainer={"devices": 2}, store_adversarial=True)  # DDP, gloo, forked ranks
    assert two.computed == ["m0", "m1", "m2"] and len(list((tmp_path / "records").glob("*.adv.npy"))) == 3
    assert not list((tmp_path / "records").glob(".ranks-*"))
    one = run(zoo, 3).records
    assert np.array_equal(two.records.correct, one.correct) and np.array_equal(two.records.fooled, one.fooled)
    added = run(zoo, 4, tmp_path, trainer={"devices": 2})  # ranks complete rows from stored images too
    assert added.completed == ["m0", "m1", "m2"] and added.computed == ["m3"]
    assert np.array_equal(added.records.fooled, run(zoo, 4).records.fooled)
    with pytest.raises(SatlabError, match="set sat.resume=true"):
        run(zoo, 2, trainer={"devices": 2})
