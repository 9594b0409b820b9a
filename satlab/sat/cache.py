"""The per-source records cache: row files (`fooled` of one source against its targets) and the source's
adversarial images, both keyed by content and checked when read.

A row file `<cache>/records/<source>-<row_key>.npz` holds `fooled` [T,S] for the targets named by their content
keys, plus the clean correctness [T,S], sample ids and labels it was computed with. Its own column (the source
as its own target) holds the source's clean correctness and white-box success. Beside it, `<same name>.adv.npy`
holds the source's adversarial images by dataset position: uint8 [S,C,H,W] when the attack rounds to 8-bit
levels (lossless), else float32; images outside the source's correct set are zero (`sat.store_adversarial=false`
keeps them only for the run). A row only grows: a run with other targets adds its columns
(`Row.grown`) and keeps the others, so runs on subsets and supersets of a model set share their work.

Every file is written atomically with its SHA-256 beside it (`<name>.sha256`) and checked against it before it
is used (once per process and file version: `satlab.utils.verified`); a file that does not match, or has no
checksum, is moved aside with a warning naming it and recomputed, never used.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from satlab.sat.schedule import RowState
from satlab.utils import (SatlabError, atomic_path, check_free_space, checksum_path, file_lock, move_aside, new_array,
                          no_space_message, read_array, reserve, stable_hash, verified)

log = logging.getLogger(__name__)

# Part of every cache key: bump it when a change to attacks or the engine changes what a record holds.
RECORDS_VERSION = 4


def row_key(model_key: str, name: str, context: dict[str, Any]) -> str:
    """Cache key of one source's row: what determines it, by content.

    The source's weights + preprocessing (`model_key`), its name (it seeds the random start, `sample_seeds`),
    and `context`: the attack as it runs (`attack.describe()`), the data's content fingerprint, the run seed,
    the numeric precision, and RECORDS_VERSION. The targets are checked when the row is read (`Row.check`).
    """
    return stable_hash({"model": model_key, "name": name, **context, "version": RECORDS_VERSION})


def row_path(cache_dir: str | Path, name: str, model_key: str, context: dict[str, Any]) -> Path:
    return Path(cache_dir) / "records" / f"{name}-{row_key(model_key, name, context)}.npz"


def adv_path(path: Path) -> Path:
    """Where the adversarial images of the row file `path` are stored."""
    return path.with_suffix(".adv.npy")


@dataclass
class Row:
    """One source's row: target keys, their clean `correct` [T,S] as used for X_AB, sample ids, labels, `fooled`
    [T,S] (False outside X_AB), and `seen` [T]: how many images of the map's order (`satlab.sat.precision.
    image_order`) each column covers (S: every image; fewer only in maps at a stated precision, `sat.precision`,
    where `fooled` is False past the column's prefix). A row without `seen` covers every image."""

    target_keys: list[str]
    correct: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    fooled: np.ndarray
    seen: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.seen is None:
            self.seen = np.full(len(self.target_keys), len(self.ids), dtype=np.int64)
        self.seen = np.asarray(self.seen, dtype=np.int64)

    @cached_property
    def where(self) -> dict[str, int]:
        """Each target key's column (a row is not changed once made: `grown` and `without` make new rows)."""
        return {k: i for i, k in enumerate(self.target_keys)}

    def own(self, key: str, what: str = "correct") -> np.ndarray | None:
        """The column of target `key` (`correct` or `fooled`), None when the row has none."""
        return getattr(self, what)[self.where[key]] if key in self.where else None

    def reach(self, key: str) -> int:
        """How many images of the order the column of target `key` covers (0 without a column)."""
        return int(self.seen[self.where[key]]) if key in self.where else 0  # type: ignore[index]

    def columns(self, keys: list[str], what: str = "fooled") -> np.ndarray:
        """`fooled` (or `correct`, `seen`) for the targets `keys` (all known to this row), in that order."""
        return getattr(self, what)[[self.where[k] for k in keys]]

    def grown(self, new: Row, starts: np.ndarray | None = None) -> Row:
        """This row with the columns of `new` it lacks, and its columns that `new` extends further into the image
        order: `new`'s column j holds the images of the order from `starts[j]` (None: 0) to `new.seen[j]`, so it
        extends a stored column that reaches at least `starts[j]` (the flags of both are kept: each is False past
        its own prefix). Other columns are kept as stored."""
        starts = np.zeros(len(new.target_keys), dtype=np.int64) if starts is None else np.asarray(starts)
        where = self.where
        keys, correct, fooled, seen = list(self.target_keys), self.correct, self.fooled.copy(), self.seen.copy()
        add = []
        for j, key in enumerate(new.target_keys):
            i = where.get(key)
            if i is None:
                if starts[j] == 0:  # a new column must start at the first image
                    add.append(j)
            elif seen[i] < new.seen[j] and starts[j] <= seen[i]:  # type: ignore[index]
                fooled[i] |= new.fooled[j]
                seen[i] = new.seen[j]  # type: ignore[index]
        if not add and np.array_equal(seen, self.seen):
            return self
        return Row(keys + [new.target_keys[j] for j in add], np.concatenate([correct, new.correct[add]]), self.ids,
                   self.labels, np.concatenate([fooled, new.fooled[add]]),
                   np.concatenate([seen, new.seen[add]]))  # type: ignore[index]

    def without(self, keys: set[str]) -> Row:
        """This row without the columns of the targets `keys`."""
        kept = [i for i, k in enumerate(self.target_keys) if k not in keys]
        return Row([self.target_keys[i] for i in kept], self.correct[kept], self.ids, self.labels, self.fooled[kept],
                   self.seen[kept])  # type: ignore[index]

    def state(self, images: bool) -> RowState:
        """What the scheduler needs to know of this row (`satlab.sat.schedule.RowState`)."""
        total = len(self.ids)
        partial = {k: int(n) for k, n in zip(self.target_keys, self.seen) if n < total}  # type: ignore[arg-type]
        return RowState(frozenset(self.target_keys), images, True, partial)


def read_row(path: Path) -> Row | None:
    """The stored row at `path`; None when absent. A damaged file (its checksum, or its content) is moved aside
    (warning)."""
    if not verified(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            return Row([str(k) for k in cached["target_keys"]], cached["correct"], cached["sample_ids"],
                       cached["labels"], cached["fooled"], cached["seen"] if "seen" in cached else None)
    except Exception as err:  # noqa: BLE001 - truncated/garbled files raise BadZipFile, EOFError, zlib.error, ...
        move_aside(path, f"{type(err).__name__}: {err}")
        return None


def save_row(path: Path, row: Row) -> None:
    with atomic_path(path, checksum=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, fooled=row.fooled, target_keys=np.asarray(row.target_keys), correct=row.correct,
                                sample_ids=row.ids, labels=row.labels, seen=row.seen)


def read_adversarial(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """The stored adversarial images of a row ([S,C,H,W] `dtype`, memory-mapped); None when absent or damaged
    (checked against the checksum written with them, once per process and file: a damaged file is moved aside)."""
    return read_array(adv_path(path), shape, dtype)


def image_dtype(quantized: bool) -> np.dtype:
    """How adversarial images are kept: uint8 levels for an attack that rounds to them, else float32 (exact)."""
    return np.dtype(np.uint8 if quantized else np.float32)


def to_stored(x_adv: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """An adversarial batch as kept (`image_dtype`); an image off the 8-bit levels is refused for uint8 (it
    would not be kept losslessly)."""
    if dtype != np.uint8:
        return x_adv.detach().float().cpu().numpy()
    levels = torch.round(x_adv.float() * 255)
    if not torch.equal(levels / 255, x_adv.float()):
        raise SatlabError("the attack's images are not on 8-bit levels although it says it rounds to them "
                          "(attack.quantize=true); set attack.quantize=false")
    return levels.to(torch.uint8).cpu().numpy()


def from_stored(images: torch.Tensor) -> torch.Tensor:
    """Kept images as the float [0,1] batch the attack returned (bit-identical)."""
    return images.float() / 255 if images.dtype == torch.uint8 else images


class RowStore:
    """Where a run's rows and adversarial images live: the records cache (`cache_dir`), or, for a run without
    one, memory (rows) and a temporary folder (images). With `keep_images=False` the images are kept only for
    the run (a row then grows by attacking its source again).

    Args:
        cache_dir: the cache (rows under `<cache_dir>/records/`), or None.
        names, keys: the models and their content keys; context: what else determines a row (`row_key`).
        ids, labels: the samples; a stored row computed on others is not used.
        shape, dtype: one source's images, [S,C,H,W] (`image_dtype`).
    """

    def __init__(self, cache_dir: str | Path | None, names: list[str], keys: list[str], context: dict[str, Any],
                 ids: np.ndarray, labels: np.ndarray, shape: tuple[int, ...], dtype: np.dtype,
                 keep_images: bool = True) -> None:
        self.paths = {n: row_path(cache_dir, n, k, context) for n, k in zip(names, keys)} if cache_dir else {}
        self.scratch_root = Path(cache_dir) / "records" if cache_dir else None
        self.ids, self.labels, self.shape, self.dtype = ids, labels, shape, dtype
        self.keep = keep_images and bool(self.paths)
        self.rows: dict[str, Row] = {}  # without a cache: this run's rows
        self.scratch: dict[str, np.ndarray] = {}  # images kept for this run only
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._files = 0  # images files of this run in `_tmp`
        self._scratch_files: dict[str, Path] = {}  # the file of each source's images kept for the run

    def close(self) -> None:
        self.scratch.clear()
        if self._tmp is not None:
            self._tmp.cleanup()

    def read(self, name: str) -> Row | None:
        if not self.paths:
            return self.rows.get(name)
        row = read_row(self.paths[name])
        if row is not None and not (np.array_equal(row.ids, self.ids) and np.array_equal(row.labels, self.labels)):
            log.warning("source %s: cached row %s was computed on other sample ids/labels; recomputing", name,
                        self.paths[name].name)
            return None
        return row

    def images(self, name: str) -> np.ndarray | None:
        """The source's adversarial images at hand (kept by this run or stored), memory-mapped; None if none."""
        if name in self.scratch:
            return self.scratch[name]
        return read_adversarial(self.paths[name], self.shape, self.dtype) if self.paths else None

    def state(self, name: str) -> RowState:
        row = self.read(name)
        return row.state(self.images(name) is not None) if row is not None else RowState()

    def check_room(self, sources: list[str]) -> None:
        """Before any attack: SatlabError when the disk that will keep the images of `sources` (the cache, or a
        temporary folder) has no room for them and their rows."""
        folder = self.scratch_root if self.scratch_root is not None else Path(tempfile.gettempdir())
        samples = self.shape[0] if self.shape else 0
        per_source = int(np.prod(self.shape)) * self.dtype.itemsize + 2 * len(self.paths) * samples + 8192  # + a row
        check_free_space(folder, len(sources) * per_source, f"the adversarial images of {len(sources)} source(s)")

    def disk_bytes(self, names: list[str]) -> int:
        """Bytes of the stored images and rows of `names` in the cache."""
        files = [f for n in names if n in self.paths for f in (self.paths[n], adv_path(self.paths[n]))]
        return sum(f.stat().st_size for f in files if f.is_file())

    @contextmanager
    def lock(self, name: str, wait: bool = True) -> Iterator[bool]:
        """The lock of a source's row in the cache (always held without a cache); see `satlab.utils.file_lock`."""
        if not self.paths:
            yield True
            return
        with file_lock(self.paths[name], f"the records of source {name}", wait=wait) as held:
            yield held

    @contextmanager
    def new_images(self, name: str, base: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """A writable [S,C,H,W] array for the source's adversarial images, memory-mapped, so processes forked by
        the caller write into it too, holding a copy of `base` (the images so far, when an attack goes further into
        the image order); stored (atomically) or kept for the run when the block ends without error."""
        if self.keep:
            with new_array(adv_path(self.paths[name]), self.shape, self.dtype) as images:
                if base is not None:
                    images[:] = base
                yield images
            return
        if self._tmp is None:
            root = self.scratch_root or Path(tempfile.gettempdir())
            root.mkdir(parents=True, exist_ok=True)
            self._tmp = tempfile.TemporaryDirectory(dir=root, prefix=".images-")
        self._files += 1
        path = Path(self._tmp.name) / f"{self._files}.npy"
        try:
            images = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=self.shape)
            reserve(path)
        except OSError:
            path.unlink(missing_ok=True)
            needed = int(np.prod(self.shape)) * self.dtype.itemsize
            raise SatlabError(f"the adversarial images of {name}: {no_space_message(path.parent, needed)}") from None
        if base is not None:
            images[:] = base
        yield images
        images.flush()
        self.scratch[name] = np.load(path, mmap_mode="r")
        if name in self._scratch_files:  # the images so far, copied into this file
            self._scratch_files[name].unlink(missing_ok=True)
        self._scratch_files[name] = path
        if self.paths:
            adv_path(self.paths[name]).unlink(missing_ok=True)  # older images, if any, are not this run's

    def drop(self, name: str) -> None:
        """Forget the source's row and images (call under `lock`): its attack starts again from the first image."""
        self.rows.pop(name, None)
        self.scratch.pop(name, None)
        if name in self._scratch_files:
            self._scratch_files.pop(name).unlink(missing_ok=True)
        if self.paths:
            for path in (self.paths[name], adv_path(self.paths[name])):
                path.unlink(missing_ok=True)
                checksum_path(path).unlink(missing_ok=True)

    def write(self, name: str, new: Row, own_key: str | None = None, replace: bool = False,
              starts: np.ndarray | None = None) -> Row:
        """Store `new` merged into the source's stored row (rows only grow; call under `lock`), or in its place
        (`replace`); `starts`: where in the image order each of `new`'s columns begins (`Row.grown`; None: at the
        first image). With `own_key` (a fresh attack: `new` holds the source's own column), a stored row whose
        source classified the images differently is replaced, since its columns were computed on another X_A."""
        stored = None if replace else self.read(name)
        if stored is not None and own_key is not None:
            before = stored.own(own_key)
            if before is not None and not np.array_equal(before, new.own(own_key)):
                log.warning("source %s: its stored row was computed when it classified %d clean image(s) "
                            "differently (another device or library version?); replacing it", name,
                            int((before != new.own(own_key)).sum()))
                stored = None
        if stored is None:
            stored = Row([], new.correct[:0], self.ids, self.labels, new.fooled[:0])
        row = stored.grown(new, starts)
        if self.paths:
            save_row(self.paths[name], row)
        else:
            self.rows[name] = row
        return row
