"""A full disk where satlab writes: one `satlab: error:` line naming the folder and the space needed, exit 2, no
temporary file left and nothing half-written; memory-mapped writes reserve their blocks first (never SIGBUS).

The cache sits on a small tmpfs this test mounts (root only: elsewhere the tests skip, saying why)."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from satlab.sat.cache import RowStore
from satlab.utils import SatlabError, atomic_path

FAST = ["experiment=smoke", "dataset.samples_per_class=2", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "sat.print_table=false"]


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs at tmp_path/disk, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill `disk` so that about `leave` bytes stay free (tmpfs counts in 4 KiB pages)."""
    (disk / "filler").unlink(missing_ok=True)
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "wb") as fh:
        fh.write(bytes(max(free - leave, 0)))
    assert abs(os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - leave) <= 4096


def debris(disk: Path) -> list[str]:
    """Files in `disk` other than the filler and lock files: temporary files, half-written results."""
    return [str(p.relative_to(disk)) for p in disk.rglob("*")
            if p.is_file() and p.name != "filler" and not p.name.endswith(".lock")]


@pytest.mark.parametrize("leave", [0, 8192], ids=["0 bytes free", "8 KiB free"])
@pytest.mark.parametrize("models", ["model_set=timm_tiny", "model_set=digits_tiny"], ids=["map", "zoo training"])
def test_a_full_cache_disk_is_one_line_before_any_work(small_disk, tmp_path, satlab_in_process, leave, models):
    fill(small_disk, leave)
    done = satlab_in_process([*FAST, models, f"paths.cache_dir={small_disk / 'cache'}", "hydra.run.dir=run"],
                             tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.startswith("satlab: error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-2000:]
    assert "no space left on the device of" in errors[0] and str(small_disk) in errors[0]
    assert "needed" in errors[0] and "paths.cache_dir" in errors[0]
    assert ("the weights of" if "digits_tiny" in models else "the adversarial images of") in errors[0]
    assert debris(small_disk) == [] and not (tmp_path / "run").exists()  # no run folder, no temporary file


def test_atomic_write_on_a_full_disk_is_one_error_and_leaves_nothing(small_disk):
    fill(small_disk, 0)
    target = small_disk / "result.npz"
    with pytest.raises(SatlabError, match=f"no space left on the device of '{small_disk}'"):
        with atomic_path(target, checksum=True) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, x=np.zeros(100_000))
    assert debris(small_disk) == []


def test_memory_mapped_images_reserve_their_blocks_first(small_disk):
    fill(small_disk, 64 * 1024)
    ids, labels = np.arange(100), np.zeros(100, dtype=np.int64)
    shape = (100, 3, 32, 32)  # 300 KiB: more than the disk has
    for keep in (True, False):  # stored in the cache, or kept for the run only
        store = RowStore(small_disk / "cache", ["a"], ["k"], {}, ids, labels, shape, np.dtype(np.uint8), keep)
        with pytest.raises(SatlabError, match="no (space left|room)"):
            with store.new_images("a") as images:
                images[:] = 255  # without the reservation this write would die of SIGBUS
        store.close()
        assert debris(small_disk) == []


def test_a_full_output_disk_is_one_line_before_any_work(small_disk, tmp_path, satlab_in_process):
    fill(small_disk, 8192)
    done = satlab_in_process([*FAST, "model_set=timm_tiny", f"paths.output_dir={small_disk / 'out'}",
                              f"paths.cache_dir={tmp_path / 'cache'}", "hydra.run.dir=run"], tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.startswith("satlab: error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-2000:]
    assert errors[0].startswith("satlab: error: the run's results: no space left on the device of")
    assert "paths.output_dir" in errors[0] and not (tmp_path / "cache" / "records").exists()  # no model work
    assert debris(small_disk) == []
