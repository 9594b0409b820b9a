"""The evaluation images decoded once per map (satlab.data.pixels): bitwise today's pixels and fingerprint, decoded
once however many models and passes, kept in the cache (checked) for later runs, bad files and full disks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from satlab.attacks import create_attack
from satlab.data import data_fingerprint
from satlab.data.common import DECODES
from satlab.data.fingerprint import decode_report
from satlab.data.folders import imagefolder
from satlab.models import ModelSet, TimmSource
from satlab.models.specs import ModelSpec
from satlab.ensemble.predict import predict_log_probs
from satlab.sat.engine import compute_records
from satlab.sat.schedule import Tile
from satlab.sat.phases import Batches
from satlab.utils import SatlabError, checksum_path

QUIET = {"accelerator": "cpu", "enable_progress_bar": False, "logger": False, "enable_checkpointing": False}


def make_tree(root, per_class=6, size=(100, 75)):
    """A class-folder tree of smooth JPEGs (gradients and a disc, different per image), 2 classes."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            disc = ((xx - w * (k + 1) / (per_class + 1)) ** 2 + (yy - h / 2) ** 2 < (h / 4) ** 2) * 90
            img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy + 40 * k + 100 * c) % 256], -1) + disc[..., None]
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{k}.jpg", quality=85)
    return root


def tree_data(root, **kw):
    return imagefolder(str(root), resize=40, resolution=32, **kw).eval


def per_access(ds):
    """Today's path: every item decoded from its file on access, through a Subset (never decoded once)."""
    return Subset(ds, range(len(ds)))


def test_decoded_once_bitwise_todays_pixels_and_fingerprint(tmp_path):
    root = make_tree(tmp_path / "tree")
    old = tree_data(root)
    new = tree_data(root)
    today = torch.stack([old[i][0] for i in range(len(old))])
    start = DECODES.value
    fingerprint = data_fingerprint(new, 2, None)
    assert DECODES.value - start == len(new)  # each image once, on 2 threads
    assert fingerprint == data_fingerprint(per_access(tree_data(root)))  # the per-access pass's digest
    assert isinstance(new.pixels(), np.ndarray) and decode_report(new).where == "memory"
    start = DECODES.value
    assert torch.equal(torch.stack([new[i][0] for i in range(len(new))]), today)  # items: bitwise today's
    x = Batches(new, 5)[1][0]  # batches: the uint8 levels themselves
    assert x.dtype == torch.uint8 and torch.equal(x.float() / 255, today[5:10])
    assert DECODES.value == start  # the items and batches above decoded nothing


def test_cache_file_second_run_decodes_nothing_changed_file_again(tmp_path):
    root = make_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    start = DECODES.value
    first = data_fingerprint(tree_data(root), 2, cache)
    assert DECODES.value - start == 12
    files = list((cache / "pixels").glob("*.npy"))
    assert len(files) == 1 and checksum_path(files[0]).is_file()
    again = tree_data(root)  # another run (or tile, or task=ensemble) on the same files
    start = DECODES.value
    assert data_fingerprint(again, 2, cache) == first and DECODES.value == start
    assert isinstance(again.pixels(), np.memmap) and decode_report(again).where == "cache file, reused"
    # one changed file: another source key, decoded again, another fingerprint
    img = np.asarray(Image.open(root / "dog" / "3.jpg")).copy()
    img[10:20, 10:20] = 255 - img[10:20, 10:20]
    Image.fromarray(img).save(root / "dog" / "3.jpg", quality=85)
    changed = tree_data(root)
    assert data_fingerprint(changed, 2, cache) != first and DECODES.value - start == 12
    assert torch.equal(changed[9][0], tree_data(root)[9][0])  # the changed image as decoded today
    assert len(list((cache / "pixels").glob("*.npy"))) == 2


def test_damaged_pixel_file_is_moved_aside_and_decoded_again(tmp_path, caplog):
    root = make_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    first = data_fingerprint(tree_data(root), 2, cache)
    path = next((cache / "pixels").glob("*.npy"))
    with open(path, "r+b") as fh:  # one byte flipped inside the pixels
        fh.seek(-100, 2)
        byte = fh.read(1)
        fh.seek(-100, 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    start = DECODES.value
    with caplog.at_level(logging.WARNING):
        again = tree_data(root)
        assert data_fingerprint(again, 2, cache) == first
    assert DECODES.value - start == 12  # decoded again, to the same pixels
    assert any("damaged cache file" in r.getMessage() and path.name in r.getMessage() for r in caplog.records)
    assert list((cache / "pixels").glob("*.npy.corrupt-*"))
    assert decode_report(again).where == "cache file"


def test_unreadable_jpeg_is_one_error_naming_it_nothing_written(tmp_path):
    root = make_tree(tmp_path / "tree")
    bad = root / "cat" / "4.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated mid-scan
    cache = tmp_path / "cache"
    with pytest.raises(SatlabError, match=r"cannot read image .*cat/4\.jpg"):
        data_fingerprint(tree_data(root), 2, cache)
    assert not [p for p in (cache / "pixels").iterdir() if not p.name.endswith(".lock")]
    with pytest.raises(SatlabError, match=r"cannot read image .*cat/4\.jpg"):  # as a task decodes: before the checks
        data_fingerprint(tree_data(root), 2, tmp_path / "other", write=False)
    assert not (tmp_path / "other").exists()


def test_pixels_kept_in_memory_until_the_checks_then_written_without_decoding(tmp_path):
    root = make_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    ds = tree_data(root)
    start = DECODES.value
    fingerprint = data_fingerprint(ds, 2, cache, write=False)  # a task, before its models are checked
    assert decode_report(ds).where == "memory" and not cache.exists()
    assert data_fingerprint(ds, 2, cache) == fingerprint  # the engine: written from memory
    assert decode_report(ds).where == "cache file" and isinstance(ds.pixels(), np.memmap)
    assert DECODES.value - start == 12
    again = tree_data(root)
    assert data_fingerprint(again, 2, cache, write=False) == fingerprint and DECODES.value - start == 12
    assert np.array_equal(np.asarray(again.pixels()), np.asarray(ds.pixels()))


def test_unreadable_jpeg_on_the_command_line_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from test_bad_input import BASE, assert_one_line_error, run_cli

    root = make_tree(tmp_path / "tree")
    (root / "dog" / "2.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG after all")
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    code, _, err = run_cli([*BASE, "dataset=imagefolder", f"dataset.root={root}", "dataset.resize=40",
                            "dataset.resolution=32", f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}"],
                           monkeypatch, capsys)
    assert_one_line_error(code, err, "cannot read image")
    assert "dog/2.jpg" in err
    written = [p for d in (run_dir, cache) if d.exists() for p in d.rglob("*") if p.is_file()]
    assert not written, written


def test_no_room_in_the_cache_falls_back_to_memory_or_says_what_it_needs(tmp_path, monkeypatch, caplog):
    import satlab.data.pixels as pixels

    root = make_tree(tmp_path / "tree")
    cache = tmp_path / "cache"

    def full(folder, needed, what):
        raise SatlabError(f"{what}: no space left")

    monkeypatch.setattr(pixels, "check_free_space", full)
    with caplog.at_level(logging.WARNING):
        ds = tree_data(root)
        data_fingerprint(ds, 2, cache)
    assert decode_report(ds).where == "memory" and not list((cache / "pixels").glob("*.npy"))
    assert any("keeping them in memory" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(pixels, "fits_in_memory", lambda nbytes: False)
    start = DECODES.value
    with pytest.raises(SatlabError, match=r"fit neither in the cache nor in memory.*(KiB|MiB) needed"):
        data_fingerprint(tree_data(root), 2, cache)
    assert DECODES.value == start  # refused before decoding anything


def tiny_models(names):
    return ModelSet([TimmSource(ModelSpec(a, a, pretrained=False, input_size="dataset"), 2, 32) for a in names])


@pytest.mark.parametrize("amp", [False, True])
def test_engine_decodes_each_image_once_per_map_records_equal_todays(tmp_path, amp):
    root = make_tree(tmp_path / "tree")
    attack = create_attack("pgd_linf", eps=8 / 255, steps=1)
    names = ["test_resnet", "test_efficientnet", "test_convnext"]
    settings = dict(batch_size=8, trainer_cfg=QUIET, amp=amp)
    start = DECODES.value
    today = compute_records(tiny_models(names), per_access(tree_data(root)), attack, num_workers=0, **settings)
    assert DECODES.value - start > 3 * 12  # today's path: every pass decodes again
    cache = tmp_path / "cache"
    start = DECODES.value
    new = compute_records(tiny_models(names), tree_data(root), attack, num_workers=2, cache_dir=cache, **settings)
    assert DECODES.value - start == 12  # each image once, for three models
    for field in ("correct", "fooled", "sample_ids", "labels"):
        assert np.array_equal(getattr(new.records, field), getattr(today.records, field))
    assert new.context == today.context  # every cache key unchanged
    path = new.data_path
    assert path["decode"]["decodes"] == 12 and path["decode"]["kept_in"] == "cache file"
    assert set(path) >= {"decode", "attack", "evaluate", "total"}
    assert all(path["attack"][k] >= 0 for k in ("wait_s", "transfer_s", "compute_s"))
    assert path["attack"]["compute_s"] > 0
    assert 0 <= path["total"]["waiting_share"] <= 1
    start = DECODES.value  # a second run on the same data: rows and pixels from the cache
    again = compute_records(tiny_models(names), tree_data(root), attack, num_workers=2, cache_dir=cache, **settings)
    assert DECODES.value == start and np.array_equal(again.records.fooled, today.records.fooled)
    # a tile job with a new target (its clean pass and evaluations run) and task=ensemble's prediction pass
    tile = Tile(sources=("test_resnet",), targets=("test_resnet", "test_vit"))
    compute_records(tiny_models([*names, "test_vit"]), tree_data(root), attack, num_workers=2, cache_dir=cache,
                    tile=tile, **settings)
    predictions = predict_log_probs(tiny_models(names), tree_data(root), batch_size=8, cache_dir=cache,
                                    trainer_cfg=QUIET)
    assert DECODES.value == start and predictions.computed == names


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_loader_pins_and_prefetches_on_cuda_only(tmp_path, device):
    """Job.loader's choice (the CUDA branch is built here without a GPU; it is not iterated)."""
    from types import SimpleNamespace

    from satlab.sat.engine import Job
    from satlab.sat.phases import AdversarialBatches

    job = Job.__new__(Job)
    job.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
    job.num_workers = 3
    decoded = tree_data(make_tree(tmp_path / "tree", per_class=2))
    data_fingerprint(decoded, 1, None)
    stored = AdversarialBatches([np.zeros((4, 3, 32, 32), np.uint8)], np.zeros(4, np.int64),
                                np.array([[0, 0], [0, 1]]), 2)
    on_access = Batches(per_access(tree_data(tmp_path / "tree")), 2)
    for dataset in (Batches(decoded, 2), stored, on_access):
        loader = job.loader(dataset)
        cuda = device == "cuda"
        assert loader.pin_memory == cuda
        assert loader.num_workers == (3 if cuda or dataset is on_access else 0)
        assert loader.prefetch_factor == (4 if cuda else None if dataset is not on_access else 2)
