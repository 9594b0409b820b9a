"""The evaluation images decoded once per map: the pixels exactly as the models see them (resized, cropped, uint8),
decoded in parallel during the pass that computes the content fingerprint, and kept for every later pass and task.

    where they are kept                       when
    ----------------------------------------  -----------------------------------------------------------------
    <cache_dir>/pixels/<source key>.npy        a cache folder is given (sat runs, tiles, task=ensemble): read
      (memory-mapped, SHA-256 beside it)       memory-mapped by every later pass and by later runs on the same
                                               files, which decode nothing; the OS keeps it in memory when it fits
    memory                                     no cache folder, or no room for the file there (a logged line), and
                                               the pixels take at most a quarter of the available memory
    nowhere (decoded on access, as before)     no cache folder and too large for memory (a logged line)

The source key hashes what determines the pixels before any decode: every file's bytes (in order), the resize and
crop, and the versions of Pillow and torchvision that decode and resize them, so a changed file (or another
resolution) is decoded again. The file is written atomically with its checksum (`satlab.utils.atomic_path`), its
blocks reserved first (a full disk fails before the decode, never as SIGBUS), and read only once it matches its
checksum (`satlab.utils.verified`: a damaged file is moved aside and decoded again). Decodes are counted in
`satlab.data.common.DECODES`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torchvision

from satlab.data.common import FileImages, LabeledDataset
from satlab.utils import (SatlabError, check_free_space, file_lock, human_bytes, new_array, no_space_message,
                          read_array)

log = logging.getLogger(__name__)

PIXELS_VERSION = 1  # part of the source key: bump it when a change here changes the decoded pixels
CHUNK = 256  # images decoded (and hashed) at a time; also the fingerprint's batch (see `satlab.data.fingerprint`)


def default_workers() -> int:
    """The cores this process may run on (`sat.num_workers: null`)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable; the free pages where /proc/meminfo is absent)."""
    try:
        with open("/proc/meminfo") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def fits_in_memory(nbytes: int) -> bool:
    """Whether `nbytes` of pixels may be held in memory: at most a quarter of the memory available now."""
    return nbytes <= available_memory() // 4


@dataclass
class DecodeReport:
    """What the decode pass did: `where` is "cache file" (written now), "cache file, reused" (decoded nothing),
    "memory", or "on access" (not kept); `decodes` counts the images decoded by it."""

    where: str = "on access"
    images: int = 0
    decodes: int = 0
    workers: int = 1
    seconds: float = 0.0
    path: str | None = None  # the pixel file they are kept in
    pending: str | None = None  # the pixel file they go to once written (`persist_pixels`)

    def line(self) -> str:
        done = (f"{self.decodes} image(s) decoded in {self.seconds:.1f} s on {self.workers} thread(s)"
                if self.decodes else "nothing decoded")
        return f"images of the data ({self.images}): {done}; kept in {self.where}" + (
            f" ({self.path})" if self.path else "")


def source_key(ds: FileImages, workers: int) -> str:
    """Hex digest (16 chars) of what determines a file dataset's decoded pixels (module docstring), read in
    parallel; an unreadable file is one SatlabError naming it."""

    def digest(path: Path) -> str:
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise SatlabError(f"cannot read image {path}: {exc.strerror or exc}; remove or replace the file") from None

    key = hashlib.sha256(repr((PIXELS_VERSION, PIL.__version__, torchvision.__version__, ds.resize,
                               ds.resolution, len(ds.paths))).encode())
    with ThreadPoolExecutor(workers) as pool:
        for d in pool.map(digest, ds.paths):
            key.update(d.encode())
    return key.hexdigest()[:16]


def decode_into(out: np.ndarray | None, ds: Any, workers: int, each_chunk: Any) -> int:
    """Decode every image of `ds` (`ds.decode`, uint8 [3,R,R] with R = `ds.resolution`) on `workers` threads
    (Pillow releases the GIL while it decodes and resizes), CHUNK at a time, into `out` (uint8 [N,3,R,R]; None: not
    kept); `each_chunk(chunk)` sees each chunk in order. The first unreadable file stops the pass with its
    SatlabError. Returns the images decoded."""
    n, r = len(ds), ds.resolution
    buffer = np.empty((min(CHUNK, n), 3, r, r), dtype=np.uint8) if out is None else None
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            target = out[start:stop] if out is not None else buffer[:stop - start]  # type: ignore[index]

            def put(i: int, target: np.ndarray = target, start: int = start) -> None:
                target[i - start] = ds.decode(i).numpy()

            for _ in pool.map(put, range(start, stop)):  # re-raises the first error, in order
                pass
            each_chunk(target)
    return n


def decode_pixels(ds: LabeledDataset, cache_dir: str | Path | None, workers: int | None,
                  each_chunk: Any, write: bool = True) -> tuple[np.ndarray | None, DecodeReport]:
    """The images of a dataset decoded on access (`ds.decode`), decoded once and kept (module docstring).

    Args:
        ds: a FileImages (kept in the cache when `cache_dir` is given) or any LabeledDataset with `decode` and
            `resolution`.
        cache_dir: the cache folder, or None (memory only).
        workers: decoding threads; None: the cores available. Datasets other than FileImages decode on one thread
            (torchvision's classes are not all safe to read from several threads).
        each_chunk: called with each chunk of uint8 [<=CHUNK,3,R,R] pixels in order (the fingerprint's hash).
        write: write the pixel file now; False (a task before its models are checked, so that bad input leaves no
            file): pixels that fit in memory are kept there, `persist_pixels` writes them later. An existing file
            is read either way, and the room is checked either way.
    Returns:
        uint8 [N,3,R,R] (a memory map or an array), or None when not kept, and what was done.
    """
    workers = default_workers() if workers is None else max(1, int(workers))
    if not isinstance(ds, FileImages):
        workers = 1
    report = DecodeReport(images=len(ds), workers=workers)
    start = time.perf_counter()
    shape = (len(ds), 3, ds.resolution, ds.resolution)  # type: ignore[attr-defined]
    nbytes = int(np.prod(shape))
    pixels: np.ndarray | None = None
    if cache_dir is not None and isinstance(ds, FileImages):
        path = Path(cache_dir) / "pixels" / f"{source_key(ds, workers)}.npy"
        pixels = read_pixels(path, shape)
        if pixels is not None:
            report.where, report.path = "cache file, reused", str(path)
            for begin in range(0, len(pixels), CHUNK):
                each_chunk(pixels[begin:begin + CHUNK])
            report.seconds = time.perf_counter() - start
            return pixels, report
        if has_room(path, nbytes):
            if write or not fits_in_memory(nbytes):
                with file_lock(path, "the decoded evaluation images"):
                    pixels = write_pixels(path, shape, lambda out: decode_into(out, ds, workers, each_chunk), report)
                report.seconds = time.perf_counter() - start
                return pixels, report
            report.pending = str(path)  # kept in memory until the run's checks are done (`persist_pixels`)
    if fits_in_memory(nbytes):
        pixels = np.empty(shape, dtype=np.uint8)
        report.where = "memory"
    else:
        log.info("the images (%.1f MiB decoded) take more than a quarter of the available memory and no cache folder "
                 "is given: they are decoded on access (with the records cache on, they are decoded once)",
                 nbytes / 2**20)
    report.decodes = decode_into(pixels, ds, workers, each_chunk)
    report.seconds = time.perf_counter() - start
    return pixels, report


def has_room(path: Path, nbytes: int) -> bool:
    """Whether the cache's disk has room for a pixel file of `nbytes`; without it, a warning when the pixels fit in
    memory (they are kept there for the run), else one SatlabError saying how much is needed."""
    try:
        check_free_space(path.parent, nbytes + 2**20, "the decoded evaluation images")
        return True
    except SatlabError:
        if not fits_in_memory(nbytes):
            raise SatlabError(f"the decoded evaluation images ({human_bytes(nbytes)}) fit neither in the cache nor "
                              f"in memory: {no_space_message(path.parent, nbytes)}") from None
        log.warning("no room for the decoded evaluation images (%s) in %s: keeping them in memory for this "
                    "run only (%s)", human_bytes(nbytes), path.parent, no_space_message(path.parent, nbytes))
        return False


def write_pixels(path: Path, shape: tuple[int, ...], fill: Any, report: DecodeReport) -> np.ndarray:
    """Write the pixel file `path` (uint8 `shape`) atomically with its checksum, its blocks reserved first (a full
    disk fails before anything is written, never as SIGBUS), `fill(out)` writing the pixels (returns the images it
    decoded); call under the file's lock. One already there (another run wrote it meanwhile) is read instead."""
    pixels = read_pixels(path, shape)
    if pixels is None:
        with new_array(path, shape, np.uint8) as out:
            report.decodes += fill(out)
        pixels = np.load(path, mmap_mode="r")
    report.where, report.path, report.pending = "cache file", str(path), None
    return pixels


def persist_pixels(ds: LabeledDataset, report: DecodeReport) -> None:
    """Write the pixels that an earlier pass kept in memory (`decode_pixels(write=False)`) to their pixel file, and
    read them from it from now on (no decode: a copy)."""
    if report.pending is None or ds.decoded is None:
        return
    path, pixels = Path(report.pending), ds.decoded
    if not has_room(path, pixels.nbytes):
        report.pending = None
        return

    def copy(out: np.ndarray) -> int:
        out[:] = pixels
        return 0

    with file_lock(path, "the decoded evaluation images"):
        ds.decoded = write_pixels(path, pixels.shape, copy, report)
    log.info("%s", report.line())


def read_pixels(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The pixel file at `path` memory-mapped, when it matches its checksum and `shape` (uint8); else None (a
    damaged file is moved aside, one of another shape too)."""
    return read_array(path, shape, np.uint8)
