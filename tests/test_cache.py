"""Caches never give a wrong number: rows and zoo weights are keyed by content, checked when read, and a damaged
or unusable cache is named, moved aside or refused before any work. Tiny random-init timm models, 16-px images."""

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from satlab.attacks import create_attack
from satlab.data import data_fingerprint
from satlab.data.common import DatasetSplits, TensorImages
from satlab.data.folders import imagefolder
from satlab.models.factory import build_model
from satlab.models.specs import ModelSpec
from satlab.train.zoo import ZooSource
from satlab.models import ModelSet
from satlab.sat.cache import adv_path, read_row, save_row
from satlab.sat.engine import compute_records
from satlab.utils import SatlabError, check_writable_dir, checksum_path

CONF = Path(__file__).resolve().parents[1] / "conf"
QUIET = {"accelerator": "cpu", "enable_progress_bar": False}
ATTACK = create_attack("pgd_linf", eps=8 / 255, steps=2)
SPECS = [ModelSpec("resnet", "test_resnet", input_size=16),
         ModelSpec("vit", "test_vit", model_args={"dynamic_img_size": True}, input_size=16)]


def zoo_load(spec, data, recipe, cache, trainer):
    """A zoo model trained (or loaded from the cache) as a model set would."""
    return ZooSource(spec, data, recipe, cache, trainer).load()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one intra-op thread (see conftest)."""


def tiny_models(specs=SPECS):
    return [build_model(s, 3, 16) for s in specs], [s.name for s in specs]


def images(n=24, res=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return TensorImages(torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, generator=gen),
                        [i % 3 for i in range(n)], range(n))


def records(models, names, data, cache=None, attack=ATTACK, seed=0):
    return compute_records(ModelSet.from_models(names, models), data, attack, seed=seed,
                           batch_size=64, cache_dir=cache, trainer_cfg=QUIET)


def write_tree(root: Path, invert: bool = False) -> Path:
    """3 class folders x 4 random 16-px PNGs; `invert` writes 255 - pixels under the same file names."""
    rng = np.random.default_rng(0)
    for cls in ("a", "b", "c"):
        (root / cls).mkdir(parents=True)
        for k in range(4):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(255 - pixels if invert else pixels).save(root / cls / f"{k}.png")
    return root


# --- records rows: keyed by content -------------------------------------------------------------------------

def test_same_layout_other_pixels_is_not_reused(tmp_path):
    models, names = tiny_models()
    plain = imagefolder(str(write_tree(tmp_path / "plain")), resize=16, resolution=16).eval
    inverted = imagefolder(str(write_tree(tmp_path / "inverted", invert=True)), resize=16, resolution=16).eval
    assert (plain.ids == inverted.ids).all() and (plain.labels == inverted.labels).all()  # same layout
    assert data_fingerprint(plain) != data_fingerprint(inverted)
    assert records(models, names, plain, tmp_path / "cache").computed == names
    assert records(models, names, plain, tmp_path / "cache").reused == names  # the cache works ...
    second = records(models, names, inverted, tmp_path / "cache")  # ... but not across other pixels
    assert second.reused == [] and second.computed == names
    expected = records(models, names, inverted)
    assert expected.records.fooled.any()  # rows with content, so a reused row could have differed
    assert (second.records.correct == expected.records.correct).all()
    assert (second.records.fooled == expected.records.fooled).all()


def test_same_data_at_another_resolution_is_not_reused(tmp_path):
    models, names = tiny_models()  # input_size 16 fixed: the model keys do not depend on the data
    tree = write_tree(tmp_path / "tree")
    at16 = imagefolder(str(tree), resize=16, resolution=16).eval
    at12 = imagefolder(str(tree), resize=12, resolution=12).eval
    assert data_fingerprint(at16) != data_fingerprint(at12)
    records(models, names, at16, tmp_path / "cache")
    second = records(models, names, at12, tmp_path / "cache")
    assert second.reused == [] and (second.records.fooled == records(models, names, at12).records.fooled).all()


def test_changed_weights_are_not_reused_reordered_models_are(tmp_path):
    models, names = tiny_models()
    data = images()
    first = records(models, names, data, tmp_path)
    # the same models in another order: every row is reused, re-ordered to the new targets
    swapped = records(models[::-1], names[::-1], data, tmp_path)
    assert swapped.reused == names[::-1]
    assert (swapped.records.fooled == first.records.fooled[::-1, ::-1]).all()
    with torch.no_grad():
        next(models[1].parameters()).add_(0.5)  # vit changes: its row, and every row that has it as a target
    changed = records(models, names, data, tmp_path)
    assert changed.reused == []
    assert (changed.records.fooled == records(models, names, data).records.fooled).all()


def test_column_with_other_stored_correctness_is_computed_again(tmp_path, caplog):
    models, names = tiny_models()
    data = images()
    first = records(models, names, data, tmp_path)
    row = next((tmp_path / "records").glob("vit-*.npz"))
    stored = read_row(row)
    column = stored.target_keys.index(models[0].fingerprint())
    stored.correct[column, 0] = ~stored.correct[column, 0]  # as if resnet had classified an image differently
    save_row(row, stored)  # written by satlab (with its checksum): a row of another run, not a damaged file
    with caplog.at_level(logging.INFO, logger="satlab"):
        again = records(models, names, data, tmp_path)
    assert again.reused == ["resnet"] and again.completed == ["vit"] and again.computed == []
    assert any("source vit: its cached columns for resnet" in r.getMessage() and "differently" in r.getMessage()
               and r.levelno == logging.WARNING for r in caplog.records)
    assert (again.records.fooled == first.records.fooled).all()
    assert any("source resnet: reused cached row" in r.getMessage() for r in caplog.records)  # the console says it


def test_truncated_row_is_named_moved_aside_and_recomputed(tmp_path, caplog):
    models, names = tiny_models()
    data = images()
    first = records(models, names, data, tmp_path)
    row = next((tmp_path / "records").glob("resnet-*.npz"))
    row.write_bytes(row.read_bytes()[: row.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="satlab"):
        again = records(models, names, data, tmp_path)
    assert again.computed == ["resnet"] and again.reused == ["vit"]
    assert any(str(row) in r.getMessage() for r in caplog.records), caplog.text
    assert len(list(row.parent.glob(f"{row.name}.corrupt-*"))) == 1
    assert (again.records.fooled == first.records.fooled).all()
    assert records(models, names, data, tmp_path).reused == names  # the recomputed row is cached again


def damage_in_place(path: Path, count: int = 3000, seed: int = 0, start: int = 128) -> None:
    """Change `count` bytes of `path` in place past its first `start` (same size; by default the header is left
    alone), as a failing disk or a stray write would."""
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    where = rng.choice(np.arange(start, len(data)), size=min(count, len(data) - start), replace=False)
    for i in where:
        data[i] ^= 0x5A
    with open(path, "r+b") as fh:  # in place: same inode, same size
        fh.write(bytes(data))


def test_adversarial_images_damaged_in_place_are_named_moved_aside_and_recomputed(tmp_path, caplog):
    models, names = tiny_models()
    data = images()
    first = records(models, names, data, tmp_path)
    # resnet's row lacks a new target: its stored images would be evaluated on it
    grown = tiny_models([*SPECS, ModelSpec("vit2", "test_vit", model_args={"dynamic_img_size": True},
                                           input_size=16)])
    clean = records(*grown, data)
    row = next((tmp_path / "records").glob("resnet-*.npz"))
    damage_in_place(adv_path(row))
    with caplog.at_level(logging.WARNING, logger="satlab"):
        again = records(*grown, data, tmp_path)
    assert "resnet" in again.computed  # attacked again, its damaged images never used
    assert any(str(adv_path(row)) in r.getMessage() and "checksum" in r.getMessage() for r in caplog.records)
    assert len(list(row.parent.glob(f"{adv_path(row).name}.corrupt-*"))) == 1
    assert (again.records.fooled == clean.records.fooled).all() and (again.records.correct == clean.records.correct).all()
    assert (again.records.fooled[:2, :2] == first.records.fooled).all()


def test_row_damaged_in_place_is_recomputed_and_a_row_without_checksum_is_not_used(tmp_path, caplog):
    models, names = tiny_models()
    data = images()
    first = records(models, names, data, tmp_path)
    row = next((tmp_path / "records").glob("vit-*.npz"))
    damage_in_place(row, count=20)
    with caplog.at_level(logging.WARNING, logger="satlab"):
        again = records(models, names, data, tmp_path)
    assert again.reused == ["resnet"] and "vit" not in again.reused
    assert any(str(row) in r.getMessage() for r in caplog.records)
    assert (again.records.fooled == first.records.fooled).all()
    checksum_path(row).unlink()  # as an older satlab left it: no checksum, so it cannot be trusted
    assert records(models, names, data, tmp_path).reused == ["resnet"]


def test_cache_files_are_readable_by_others_under_the_umask(tmp_path):
    models, names = tiny_models()
    records(models, names, images(6), tmp_path)
    umask = os.umask(0o022)
    os.umask(umask)
    for row in (tmp_path / "records").glob("*.npz"):
        assert row.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600: a cache shared between users
    locks = list((tmp_path / "records").glob(".*.lock"))
    assert locks and all(lock.stat().st_mode & 0o777 == 0o666 for lock in locks)  # any user may take the lock


def test_same_seed_same_records_other_seed_other_records(tmp_path):
    models, names = tiny_models()
    data = images(n=96)
    attack = create_attack("pgd_linf", eps=4 / 255, steps=1)  # one step from a random start: the start matters
    a = records(models, names, data, attack=attack, seed=0).records
    b = records(models, names, data, attack=attack, seed=0).records
    c = records(models, names, data, tmp_path, attack=attack, seed=1)
    assert (a.correct == b.correct).all() and (a.fooled == b.fooled).all()
    assert (a.correct == c.records.correct).all() and (a.fooled != c.records.fooled).any()
    assert records(models, names, data, tmp_path, attack=attack, seed=0).reused == []  # seed is in the key


# --- zoo weights: keyed by what determines them ---------------------------------------------------------------

RECIPE = {"epochs": 1, "batch_size": 8, "optimizer": {"lr": 1e-3}, "augment": {"max_shift": 0}}
ZOO_SPEC = ModelSpec("net", "test_resnet", train_seed=0)


def splits(train):
    return DatasetSplits("tiny", train, images(6, seed=2), 3, 16, ["a", "b", "c"])


def zoo(cache, spec=ZOO_SPEC, train=None, recipe=RECIPE):
    model, info = zoo_load(spec, splits(train if train is not None else images(16, seed=1)), recipe, cache,
                                QUIET)
    return model.fingerprint(), info["key"], info


def test_zoo_key_follows_training_data_name_and_recipe(tmp_path):
    weights, key, info = zoo(tmp_path)
    assert info["cached"] is False
    assert zoo(tmp_path)[:2] == (weights, key) and zoo(tmp_path)[2]["cached"] is True
    inverted = images(16, seed=1)
    inverted.images = 255 - inverted.images  # another training tree with the same layout
    for other in (zoo(tmp_path, train=inverted), zoo(tmp_path, spec=replace(ZOO_SPEC, name="net2")),
                  zoo(tmp_path, recipe={**RECIPE, "optimizer": {"lr": 2e-3}})):
        assert other[2]["cached"] is False and other[1] != key and other[0] != weights


def test_zoo_needs_a_training_split(tmp_path):
    with pytest.raises(SatlabError, match="empty train split"):
        zoo_load(ZOO_SPEC, splits(None), RECIPE, tmp_path, QUIET)


@pytest.mark.parametrize("suffix", [".safetensors", ".json"])
def test_truncated_zoo_file_is_named_moved_aside_and_retrained(tmp_path, caplog, suffix):
    weights, key, _ = zoo(tmp_path)
    damaged = next((tmp_path / "zoo").glob(f"net-*{suffix}"))
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="satlab"):
        again, again_key, info = zoo(tmp_path)
    assert info["cached"] is False and again_key == key
    assert again == weights  # retrained with the same seeds: the same weights
    assert any(str(damaged) in r.getMessage() for r in caplog.records), caplog.text
    assert len(list(damaged.parent.glob(f"{damaged.name}.corrupt-*"))) == 1
    assert json.loads(damaged.with_suffix(".json").read_text())["key"] == key


def test_zoo_weights_damaged_in_place_are_named_moved_aside_and_retrained(tmp_path, caplog):
    weights, key, _ = zoo(tmp_path)
    damaged = next((tmp_path / "zoo").glob("net-*.safetensors"))
    damage_in_place(damaged, count=200)
    source = ZooSource(ZOO_SPEC, splits(images(16, seed=1)), RECIPE, tmp_path, QUIET)
    assert source.stored_key() is None  # a damaged file's stored key is not trusted: the model set builds it
    models = ModelSet([source])
    with caplog.at_level(logging.WARNING, logger="satlab"):
        assert models.key(0) == weights  # retrained, with the same seeds the same weights
    assert any(str(damaged) in r.getMessage() and "checksum" in r.getMessage() for r in caplog.records)
    assert models.info(0)["cached"] is False and len(list(damaged.parent.glob(f"{damaged.name}.corrupt-*"))) == 1
    assert zoo(tmp_path)[2]["cached"] is True  # and cached again, with its checksums


def test_zoo_weights_of_an_older_satlab_are_checked_by_their_fingerprint(tmp_path, caplog):
    weights, key, _ = zoo(tmp_path)
    stored = next((tmp_path / "zoo").glob("net-*.safetensors"))
    for f in (stored, stored.with_suffix(".json")):
        checksum_path(f).unlink()  # as written before checksums
    assert zoo(tmp_path)[2]["cached"] is True  # intact: kept (its fingerprint matches) and given checksums
    assert checksum_path(stored).is_file() and checksum_path(stored.with_suffix(".json")).is_file()
    for f in (stored, stored.with_suffix(".json")):
        checksum_path(f).unlink()
    damage_in_place(stored, count=200, start=stored.stat().st_size // 2)  # in the tensors: it still loads
    with caplog.at_level(logging.WARNING, logger="satlab"):
        again, again_key, info = zoo(tmp_path)
    assert info["cached"] is False and (again, again_key) == (weights, key)
    assert any(str(stored) in r.getMessage() and "fingerprint" in r.getMessage() for r in caplog.records)


# --- the cache dir is checked before any work -----------------------------------------------------------------

def test_cache_dir_that_is_a_file(tmp_path):
    file = tmp_path / "cache"
    file.write_text("not a folder")
    with pytest.raises(SatlabError, match=r"paths\.cache_dir '.*cache' is a file"):
        check_writable_dir(file, "paths.cache_dir")


def test_cache_dir_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SatlabError, match=r"paths\.cache_dir '.*file/cache' is not a writable folder"):
        check_writable_dir(tmp_path / "file" / "cache", "paths.cache_dir")  # even root cannot create it


def test_read_only_cache_dir(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: a read-only folder is still writable for root (the cannot-create case "
                    "above covers the refusal)")
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(SatlabError, match="not a writable folder"):
        check_writable_dir(folder, "paths.cache_dir")


def test_sat_task_refuses_a_bad_cache_dir_before_any_work(tmp_path, monkeypatch):
    from satlab.cli import run
    from satlab.tasks import sat

    monkeypatch.setattr(sat, "open_models", lambda *a, **k: pytest.fail("models opened before the cache check"))
    (tmp_path / "cache").write_text("a file")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", f"paths.cache_dir={tmp_path / 'cache'}",
                                           f"paths.output_dir={tmp_path / 'out'}"])
    with pytest.raises(SatlabError, match=r"^paths\.cache_dir .* is a file, not a folder; set paths\.cache_dir"):
        run(cfg)
    assert not (tmp_path / "out").exists()


def test_damaged_images_between_runs_end_in_a_line_and_the_clean_map(tmp_path, satlab_in_process):
    """The sequence of issue 21: a map of three models, bytes of one source's stored images changed in place, then
    the map of all four: one line names the damaged file and the matrix equals a clean run's."""
    common = ["experiment=smoke", "model_set=timm_tiny", "dataset.samples_per_class=2", "trainer.accelerator=cpu",
              "trainer.enable_progress_bar=false", "sat.print_table=false"]
    cache = tmp_path / "cache"
    first = satlab_in_process([*common, "model_set.models=[test_resnet,test_vit,test_convnext]",
                               f"paths.cache_dir={cache}", "hydra.run.dir=first"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (stored,) = (cache / "records").glob("test_resnet-*.adv.npy")
    damage_in_place(stored)
    again = satlab_in_process([*common, f"paths.cache_dir={cache}", "hydra.run.dir=again"], tmp_path)
    clean = satlab_in_process([*common, f"paths.cache_dir={tmp_path / 'fresh'}", "hydra.run.dir=clean"], tmp_path)
    assert again.returncode == 0 and clean.returncode == 0, again.stderr[-2000:] + clean.stderr[-2000:]
    said = [line for line in (again.stdout + again.stderr).splitlines() if "damaged cache file" in line]
    assert len(said) == 1 and str(stored) in said[0] and "checksum" in said[0]
    assert (tmp_path / "again" / "sat_matrix.csv").read_bytes() == (tmp_path / "clean" / "sat_matrix.csv").read_bytes()


def _rewrite(path: Path, times: int) -> None:
    """Another process growing a cache file again and again (new content each time), as concurrent runs do."""
    import time as clock

    from satlab.utils import atomic_path

    for k in range(times):
        with atomic_path(path, checksum=True) as tmp:
            tmp.write_bytes(os.urandom(4096 + k))
        clock.sleep(0.005)


def test_a_file_rewritten_by_another_process_is_never_taken_for_damaged(tmp_path):
    """The checksum is written just before the new file replaces the old one: a reader in between sees a new
    checksum beside old bytes. That must not count as damage (it moved valid rows aside before the retry)."""
    import multiprocessing

    from satlab.utils import atomic_path, verified

    path = tmp_path / "row.npz"
    with atomic_path(path, checksum=True) as tmp:
        tmp.write_bytes(b"first")
    writer = multiprocessing.get_context("fork").Process(target=_rewrite, args=(path, 300))
    writer.start()
    checks = 0
    while writer.is_alive():
        assert verified(path), "a file being rewritten was taken for damaged"
        checks += 1
    writer.join()
    assert checks > 10 and not list(tmp_path.glob("*.corrupt-*"))
