"""Maps past one machine and past memory: the two phases with any block of targets, rows that only grow, maps
grown from stored adversarial images, tiles and shards assembled from the cache, bf16 autocast kept off the
adversarial image, forked DDP ranks. Tiny random-init timm models on 24 random 16-px images."""

import logging

import numpy as np
import pytest
import torch
from torch import nn

from satlab.attacks import create_attack
from satlab.data.common import TensorImages
from satlab.models import ModelSet
from satlab.models.factory import build_model, module_bytes
from satlab.models.specs import ModelSpec
from satlab.sat.assemble import assemble_records
from satlab.sat.engine import compute_records
from satlab.sat.reference import pairwise_records
from satlab.sat.schedule import Budget, shard_tile, target_blocks, tile_list
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

    def fingerprint(self) -> str:
        return self.model.fingerprint()


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


def run(zoo, k, cache=None, calls=None, tile=None, trainer=None, only=None, **kwargs):
    """The engine on models m0..m{k-1} (or the models `only`), logging their calls into `calls`."""
    models, _, data = zoo
    calls = [] if calls is None else calls
    idx = range(k) if only is None else [int(n[1:]) for n in only]
    wrapped = ModelSet.from_models([f"m{i}" for i in idx], [Counted(models[i], f"m{i}", calls) for i in idx])
    return compute_records(wrapped, data, CountedAttack(calls), batch_size=64, cache_dir=cache,
                           trainer_cfg={**QUIET, **(trainer or {})}, tile=tile, **kwargs)


def work(calls: list) -> dict[str, tuple[int, int]]:
    """Per model: (attacks, images through its no-grad forward passes) from a call log."""
    out: dict[str, tuple[int, int]] = {}
    for name in {c if isinstance(c, str) else c[0] for c in calls}:
        attacks = sum(1 for c in calls if c == name)
        out[name] = (attacks, sum(c[2] for c in calls if isinstance(c, tuple) and c[0] == name and not c[1]))
    return out


def expected_work(correct: np.ndarray, old: int) -> dict[str, tuple[int, int]]:
    """Adding models old..N-1 to a map of models 0..old-1 whose rows and images are stored: one attack per new
    model (its clean pass on the S images and its own evaluation on X_A), and each NEW pair (source or target
    new) evaluated on its X_AB only; an old model runs no clean pass (its row holds its correctness)."""
    n, s = correct.shape
    joint = correct.astype(int) @ correct.T.astype(int)
    out = {}
    for t in range(n):
        images = sum(joint[a, t] for a in range(n) if a != t and (a >= old or t >= old))
        if t >= old:
            images += s + joint[t, t]
        if images or t >= old:
            out[f"m{t}"] = (int(t >= old), int(images))
    return out


def test_adding_models_costs_their_attacks_and_new_pairs_only(zoo, tmp_path, caplog):
    first = run(zoo, 2, tmp_path)
    assert first.computed == ["m0", "m1"] and len(list((tmp_path / "records").glob("*.adv.npy"))) == 2
    for old, new in ((2, 3), (3, 5)):  # add 1 model, then 2 more
        calls: list = []
        with caplog.at_level(logging.INFO):
            added = run(zoo, new, tmp_path, calls)
        assert added.completed == [f"m{i}" for i in range(old)] and added.reused == []
        assert added.computed == [f"m{i}" for i in range(old, new)]
        assert work(calls) == expected_work(added.records.correct, old)
        full = run(zoo, new)  # recomputed from scratch, no cache
        assert np.array_equal(added.records.correct, full.records.correct)
        assert np.array_equal(added.records.fooled, full.records.fooled)
    assert added.records.fooled.any()
    assert "source m0: cached row lacks 2 target(s) (m3, m4); evaluating them on its stored adversarial images" \
        in caplog.text
    again = run(zoo, 5, tmp_path)  # every row now covers every target
    assert again.reused == [f"m{i}" for i in range(5)]


def test_rows_only_grow_so_subset_and_superset_runs_share_work(zoo, tmp_path):
    run(zoo, 0, tmp_path, only=["m0", "m1", "m2"])
    run(zoo, 0, tmp_path, only=["m0", "m1", "m3"])  # adds m3's columns to m0's and m1's rows, keeps m2's
    calls: list = []
    again = run(zoo, 0, tmp_path, calls, only=["m0", "m1", "m2"])
    assert calls == [] and again.reused == ["m0", "m1", "m2"]  # nothing attacked, no model even run
    assert np.array_equal(again.records.fooled, run(zoo, 0, only=["m0", "m1", "m2"]).records.fooled)


@pytest.mark.parametrize("budget", [Budget(models=1), Budget(models=2), Budget(models=5), Budget(nbytes=2**40),
                                    Budget(nbytes=3_000_000)])
def test_every_block_size_gives_the_records_of_the_definition(zoo, budget):
    models, _, data = zoo
    got = run(zoo, 5, memory_budget=budget)
    sizes = {f"m{i}": module_bytes(m) for i, m in enumerate(models)}
    blocks = {1: 5, 2: 3, 5: 1}.get(budget.models) or len(target_blocks(list(sizes), sizes, budget))
    assert got.blocks == blocks and (budget.nbytes != 3_000_000 or blocks > 1), sizes
    ref = pairwise_records(models, [f"m{i}" for i in range(5)], data, ATTACK, batch_size=64)
    assert np.array_equal(got.records.correct, ref.correct) and np.array_equal(got.records.fooled, ref.fooled)
    assert got.records.fooled.any()


def test_a_budget_smaller_than_one_model_is_refused_before_any_work(zoo):
    calls: list = []
    with pytest.raises(SatlabError, match=r"sat.memory_budget=.* is smaller than model 'm0'"):
        run(zoo, 3, calls=calls, memory_budget=Budget(nbytes=1000))
    assert [c for c in calls if isinstance(c, str)] == []


def test_without_stored_images_only_incomplete_rows_are_attacked_again(zoo, tmp_path, caplog):
    run(zoo, 2, tmp_path, store_adversarial=False)
    assert not list((tmp_path / "records").glob("*.adv.npy")) and not list((tmp_path / "records").glob(".images-*"))
    calls: list = []
    with caplog.at_level(logging.INFO):
        added = run(zoo, 3, tmp_path, calls, store_adversarial=False)
    assert added.computed == ["m0", "m1", "m2"] and added.completed == []
    assert sorted(c for c in calls if isinstance(c, str)) == ["m0", "m1", "m2"]
    assert "source m0: cached row lacks 1 target(s) (m2); its adversarial images were not stored; attacking it " \
           "again (sat.store_adversarial=true keeps them next time)" in caplog.text
    assert np.array_equal(added.records.fooled, run(zoo, 3).records.fooled)


def test_tiles_then_assemble_equal_one_process(zoo, tmp_path):
    _, keys, data = zoo
    names = [f"m{i}" for i in range(4)]
    tiles = tile_list(names, "2x2")
    for tile in tiles[:3]:
        assert run(zoo, 4, tmp_path, tile=tile).records is None
    with pytest.raises(SatlabError, match=r"1 of 4 tile\(s\) are not in the cache: sat.tile=3 "):
        assemble_records(names, keys[:4], data, ATTACK, tmp_path, trainer_cfg=QUIET, tiles=tiles)
    calls: list = []
    last = run(zoo, 4, tmp_path, calls, tile=tiles[3])
    assert last.computed == [] and [c for c in calls if isinstance(c, str)] == []  # its sources were attacked
    assembled = assemble_records(names, keys[:4], data, ATTACK, tmp_path, trainer_cfg=QUIET, tiles=tiles)
    one = run(zoo, 4).records
    for key in ("correct", "fooled", "sample_ids", "labels"):
        assert np.array_equal(getattr(assembled.records, key), getattr(one, key))


def test_shards_then_assemble_equal_one_process(zoo, tmp_path):
    _, keys, data = zoo
    names = [f"m{i}" for i in range(3)]
    with pytest.raises(SatlabError, match="no complete cached row for 3 source"):
        assemble_records(names, keys[:3], data, ATTACK, tmp_path, trainer_cfg=QUIET)
    shard = run(zoo, 3, tmp_path, tile=shard_tile(names, "0/2"))
    assert shard.records is None and shard.computed == ["m0", "m2"]
    with pytest.raises(SatlabError, match=r"source\(s\): m1 "):
        assemble_records(names, keys[:3], data, ATTACK, tmp_path, trainer_cfg=QUIET)
    assert run(zoo, 3, tmp_path, tile=shard_tile(names, "1/2")).computed == ["m1"]
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
        shard_tile(["m0", "m1", "m2"], shard)


def test_shards_cover_every_source_once():
    names = [f"m{i}" for i in range(7)]
    parts = [shard_tile(names, f"{i}/3").sources for i in range(3)]
    assert sorted(sum(parts, ())) == sorted(names)


def test_bf16_autocast_keeps_adversarial_images_on_8bit_levels(zoo, tmp_path):
    plain = run(zoo, 2, tmp_path / "a")
    assert np.array_equal(plain.records.fooled, run(zoo, 2, amp=False).records.fooled)  # CPU default: off
    cast = run(zoo, 2, tmp_path / "a", amp=True)  # stores only 8-bit images, else raises
    assert cast.reused == [] and cast.computed == ["m0", "m1"]  # another precision, another key
    assert len(list((tmp_path / "a" / "records").glob("*.adv.npy"))) == 4  # 2 sources x 2 precisions


def test_two_cpu_processes_split_the_batches_and_equal_one(zoo, tmp_path):
    two = run(zoo, 3, tmp_path, trainer={"devices": 2})  # DDP, gloo, forked ranks
    assert two.computed == ["m0", "m1", "m2"] and len(list((tmp_path / "records").glob("*.adv.npy"))) == 3
    assert not list((tmp_path / "records").glob(".ranks-*"))
    one = run(zoo, 3).records
    assert np.array_equal(two.records.correct, one.correct) and np.array_equal(two.records.fooled, one.fooled)
    added = run(zoo, 4, tmp_path, trainer={"devices": 2})  # ranks complete rows from stored images too
    assert added.completed == ["m0", "m1", "m2"] and added.computed == ["m3"]
    assert np.array_equal(added.records.fooled, run(zoo, 4).records.fooled)
    with pytest.raises(SatlabError, match="set sat.resume=true"):
        run(zoo, 2, trainer={"devices": 2})
