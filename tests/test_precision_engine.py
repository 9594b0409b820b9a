"""Maps at a stated precision in the engine (`sat.precision`): each pair's result is a prefix of the fixed-count
computation on the map's image order, the stopping rule holds pair by pair, the work counted is exactly the images
the pairs used, a smaller h later (or no h) only adds images, tiles assemble to the one-job map, and every
task's files take such a map. experiment=smoke's models (digits_tiny: timm's tiny architectures trained briefly on
digits, so pairs transfer at different rates) on the 360 digits of the eval split, at h = 1.0 and 0.6 (the
weak 2-step attack transfers rarely: its pairs need over 360 images for a half-width of 0.4)."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from satlab.attacks import create_attack
from satlab.data.digits import digits
from satlab.models import ModelSet
from satlab.models.specs import model_specs
from satlab.sat import metric
from satlab.sat.assemble import assemble_records
from satlab.sat.engine import compute_records
from satlab.sat.precision import half_width, image_order, pair_counts, rounds
from satlab.sat.records import load_records, save_records
from satlab.sat.schedule import tile_list
from satlab.train.zoo import ZooSource
from satlab.utils import SatlabError

CONF = Path(__file__).resolve().parents[1] / "conf"
QUIET = {"accelerator": "cpu", "enable_progress_bar": False, "logger": False, "enable_checkpointing": False}
ATTACK = create_attack("pgd_linf", eps=16 / 255, steps=2)
FIRST = 40  # rounds of 40, 80, 160, 320, 360 images


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one intra-op thread (see conftest)."""


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory) -> str:
    """Where digits_tiny is trained once: SATLAB_CACHE_DIR (shared with the other tests) or a temp dir."""
    return os.environ.get("SATLAB_CACHE_DIR") or str(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def setup(zoo_cache):
    """digits_tiny's 4 models (trained once into `zoo_cache`), the eval digits, and the fixed-count map of them."""
    data, cache = digits(), zoo_cache
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        model_set = compose("config", overrides=["model_set=digits_tiny"]).model_set
    specs = model_specs(model_set)
    models = [ZooSource(s, data, model_set.train, cache, QUIET).load()[0] for s in specs]
    names = [s.name for s in specs]
    fixed = run(names, models, data.eval)
    return names, models, data.eval, fixed


def run(names, models, data, cache=None, precision=None, **kwargs):
    return compute_records(ModelSet.from_models(names, models), data, ATTACK, batch_size=64, cache_dir=cache,
                           trainer_cfg=QUIET, precision=precision, first_round=FIRST, **kwargs)


def width_at(records, a, b, seen):
    """Half-width of pair (a, b) on the first `seen` images of the map's order (seed 0), from fixed-map records."""
    rank = np.empty(len(records.sample_ids), dtype=np.int64)
    rank[image_order(0, len(rank))] = np.arange(len(rank))
    both = records.correct[a] & records.correct[b] & (rank < seen)
    return half_width(*pair_counts(both, records.fooled[a, b], records.fooled[b, a]))


def test_a_precision_map_is_a_prefix_of_the_fixed_map_and_stops_each_pair_by_the_rule(setup):
    names, models, data, fixed = setup
    h = 1.0
    adaptive = run(names, models, data, precision=h)
    rec, full = adaptive.records, fixed.records
    total, n = len(rec.sample_ids), len(names)
    assert (rec.correct == full.correct).all()
    np.testing.assert_array_equal(rec.image_order, image_order(0, total))
    scope = rec.scope()
    assert (rec.fooled == (full.fooled & scope)).all()  # a prefix of the fixed-count computation
    used = rec.images_used
    assert (used == used.T).all()
    steps = rounds(total, FIRST)
    for a in range(n):
        for b in range(a + 1, n):
            seen = used[a, b]
            assert seen in steps  # pairs stop at the end of a round
            here = width_at(full, a, b, seen)
            assert here <= h or seen == total  # narrow enough, or every image seen
            earlier = [m for m in steps if m < seen]
            assert all(width_at(full, a, b, m) > h for m in earlier)  # and not narrow enough at any earlier round
    # the work counted is exactly the images the pairs used (both directions), and the attacks those of X_A
    joint = metric.joint_correct(rec.correct, scope)
    assert adaptive.work["evaluated"] == joint.sum() - np.trace(joint)
    assert fixed.work["evaluated"] == metric.joint_correct(full.correct).sum() - np.trace(metric.joint_correct(
        full.correct))
    attacked = sum(int((rec.correct[a] & scope[a, a]).sum()) for a in range(n))
    assert adaptive.work["attacked"] == attacked <= fixed.work["attacked"]
    assert adaptive.work["evaluated"] <= fixed.work["evaluated"]
    # the metric on the precision map is the metric of the fixed map restricted to each pair's images
    sat = metric.sat_matrix(rec.correct, rec.fooled, scope=scope)
    for a in range(n):
        for b in range(a + 1, n):
            inside = scope[a, b]
            one = metric.sat_matrix(full.correct[[a, b]][:, inside], full.fooled[np.ix_([a, b], [a, b])][:, :, inside])
            assert sat[a, b] == pytest.approx(one[0, 1])


def test_default_records_keep_todays_format(setup, tmp_path):
    names, _, _, fixed = setup
    assert fixed.records.images_used is None and fixed.records.scope() is None
    save_records(tmp_path / "records.npz", fixed.records)
    with np.load(tmp_path / "records.npz") as stored:
        assert sorted(stored.files) == ["correct", "fooled", "labels", "models", "sample_ids"]
    again = load_records(tmp_path / "records.npz")
    assert again.images_used is None and (again.fooled == fixed.records.fooled).all()


def test_a_smaller_h_later_only_adds_images_and_no_h_completes_the_fixed_map(setup, tmp_path):
    names, models, data, fixed = setup
    cache = tmp_path / "cache"
    wide = run(names, models, data, cache, precision=1.0).records
    narrow = run(names, models, data, cache, precision=0.6)
    fresh = run(names, models, data, tmp_path / "fresh", precision=0.6)
    assert (narrow.records.images_used >= wide.images_used).all()
    assert (narrow.records.fooled & wide.scope() == wide.fooled).all()  # the earlier images keep their results
    for key in ("correct", "fooled", "images_used", "image_order"):
        np.testing.assert_array_equal(getattr(narrow.records, key), getattr(fresh.records, key))
    # the second run attacked only images past the first run's (its count is the difference)
    assert narrow.work["attacked"] == fresh.work["attacked"] - sum(
        int((wide.correct[a] & wide.scope()[a, a]).sum()) for a in range(len(names)))
    complete = run(names, models, data, cache)  # no h: every pair on every image, as the fixed map
    assert complete.records.images_used is None
    np.testing.assert_array_equal(complete.records.fooled, fixed.records.fooled)
    np.testing.assert_array_equal(complete.records.correct, fixed.records.correct)
    assert complete.work["evaluated"] == fixed.work["evaluated"] - evaluations(narrow.records)  # only the rest


def evaluations(records):
    """The evaluations a precision map's pairs used: both directions of X_AB within each pair's images."""
    joint = metric.joint_correct(records.correct, records.scope())
    return int(joint.sum() - np.trace(joint))


def test_tiles_with_precision_assemble_to_the_one_job_map(setup, tmp_path):
    names, models, data, _ = setup
    h, cache = 1.0, tmp_path / "cache"
    one = run(names, models, data, tmp_path / "one", precision=h).records
    tiles = tile_list(names, "2x2")
    for tile in tiles[:3]:
        assert run(names, models, data, cache, precision=h, tile=tile).records is None
    keys = [m.fingerprint() for m in models]
    with pytest.raises(SatlabError, match=r"1 of 4 tile\(s\) are not in the cache: sat.tile=3"):
        assemble_records(names, keys, data, ATTACK, cache, trainer_cfg=QUIET, tiles=tiles, precision=h)
    run(names, models, data, cache, precision=h, tile=tiles[3])
    if (one.images_used < len(one.sample_ids)).any():  # without h every pair must see every image
        with pytest.raises(SatlabError, match="cannot assemble the map"):
            assemble_records(names, keys, data, ATTACK, cache, trainer_cfg=QUIET, tiles=tiles)
    whole = assemble_records(names, keys, data, ATTACK, cache, trainer_cfg=QUIET, tiles=tiles, precision=h).records
    for key in ("correct", "fooled", "images_used", "image_order"):
        np.testing.assert_array_equal(getattr(whole, key), getattr(one, key))


def test_sat_ci_says_the_images_used_and_whether_h_was_reached(setup):
    names, models, data, _ = setup
    h = 1.0
    rec = run(names, models, data, precision=h).records
    table = pd.DataFrame(metric.pair_table(names, rec.correct, rec.fooled, images_used=rec.images_used,
                                           scope=rec.scope(), precision=h, n_boot=0))
    assert list(table.columns[-5:]) == ["images_used", "stop_low", "stop_high", "half_width", "reached_h"]
    assert (table["reached_h"] == (table["half_width"] <= h)).all()
    assert ((table["images_used"] == len(rec.sample_ids)) | table["reached_h"]).all()
    inside = (table["stop_low"] <= table["sat"]) & (table["sat"] <= table["stop_high"])
    assert inside.all()  # the estimate lies in its own interval


def test_without_stored_images_a_smaller_h_attacks_again_from_the_first_image(setup, tmp_path):
    names, models, data, _ = setup
    cache = tmp_path / "cache"
    run(names, models, data, cache, precision=1.0, store_adversarial=False)
    assert not list((cache / "records").glob("*.adv.npy"))  # rows only: the images were kept for the run
    again = run(names, models, data, cache, precision=0.6, store_adversarial=False)
    fresh = run(names, models, data, tmp_path / "fresh", precision=0.6)
    for key in ("correct", "fooled", "images_used", "image_order"):
        np.testing.assert_array_equal(getattr(again.records, key), getattr(fresh.records, key))
    assert again.work["attacked"] >= fresh.work["attacked"]  # its sources were attacked again from the start


def test_analyze_and_compare_take_a_precision_map(setup, zoo_cache, tmp_path, satlab_in_process):
    """task=sat with sat.precision, then task=analyze on it (kappa and CIs from its records, each pair on its own
    images) and task=compare of it against the fixed map of the same models."""
    common = ["experiment=smoke", "dataset.samples_per_class=12", "attack=pgd_linf", "attack.eps=0.0627451",
              "attack.steps=2", "sat.n_bootstrap=100", "sat.print_table=false", "logger=none",
              "trainer.enable_progress_bar=false", f"paths.cache_dir={zoo_cache}"]  # the zoo trained
    for name, extra in (("adaptive", ["sat.precision=1.0", "sat.first_round=15"]), ("fixed", [])):
        done = satlab_in_process([*common, *extra, "sat.resume=false", f"paths.output_dir={tmp_path / name}"],
                                 tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    pairs = pd.read_csv(tmp_path / "adaptive" / "sat_ci.csv")
    assert {"images_used", "half_width", "reached_h"} <= set(pairs.columns)
    assert (pairs["ci_low"] <= pairs["sat"]).all() and (pairs["sat"] <= pairs["ci_high"]).all()
    matrix = tmp_path / "adaptive" / "sat_matrix.csv"
    analyzed = satlab_in_process(["task=analyze", "logger=none", f"analyze.matrix={matrix}", "analyze.n_bootstrap=100",
                                  f"paths.output_dir={tmp_path / 'analyze'}"], tmp_path)
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    assert "do not reproduce the matrix" not in analyzed.stdout + analyzed.stderr  # its records were used
    assert (tmp_path / "analyze" / "kappa_matrix.csv").is_file()
    compared = satlab_in_process(["task=compare", "logger=none", f"compare.a={tmp_path / 'adaptive'}",
                                  f"compare.b={tmp_path / 'fixed'}", f"paths.output_dir={tmp_path / 'compare'}"],
                                 tmp_path)
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert (tmp_path / "compare" / "comparison.json").is_file()
