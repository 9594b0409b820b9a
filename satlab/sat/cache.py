"""The per-source records cache: row files (`fooled` of one source against its targets) and, optionally, the
source's adversarial images, both keyed by content and checked when read.

A row file `<cache>/records/<source>-<row_key>.npz` holds `fooled` [T,S] for the targets named by their content
keys, plus the clean correctness [T,S], sample ids and labels it was computed with. Beside it, with
`sat.store_adversarial=true`, `<same name>.adv.npy` holds the source's adversarial images as uint8 [S,C,H,W] by
dataset position (lossless: attacks round to 8-bit levels; images outside the source's correct set are zero).
A row that lacks some of the current targets is completed from those images without attacking again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from satlab.utils import SatlabError, atomic_path, move_aside, stable_hash

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
    """A row as stored, or what a row must agree with: target keys, `correct` [T,S], sample ids, labels, and
    (for a stored row) `fooled` [T,S]."""

    target_keys: list[str]
    correct: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    fooled: np.ndarray | None = None

    def missing(self, keys: list[str]) -> list[int]:
        """Positions in `keys` (the current targets) of the targets this row has no column for."""
        have = set(self.target_keys)
        return [i for i, k in enumerate(keys) if k not in have]

    def check(self, current: Row, source: str, path: Path) -> bool:
        """Same sample ids and labels, and the same clean correctness for every target both know (warns if not:
        e.g. another device or library version changed predictions)."""
        if not (np.array_equal(self.ids, current.ids) and np.array_equal(self.labels, current.labels)):
            log.warning("source %s: cached row %s was computed on other sample ids/labels; recomputing", source,
                        path.name)
            return False
        where = {k: i for i, k in enumerate(self.target_keys)}
        both = [(where[k], i) for i, k in enumerate(current.target_keys) if k in where]
        differ = (self.correct[[a for a, _ in both]] != current.correct[[b for _, b in both]]).sum(axis=1)
        if differ.any():
            log.warning("source %s: cached row %s was computed when %d target(s) classified %d clean image(s) "
                        "differently (e.g. another device or library version); recomputing", source, path.name,
                        int((differ > 0).sum()), int(differ.sum()))
            return False
        return True

    def columns(self, keys: list[str], what: str = "fooled") -> np.ndarray:
        """`fooled` (or `correct`) for the targets `keys` (all known to this row), in that order."""
        where = {k: i for i, k in enumerate(self.target_keys)}
        return getattr(self, what)[[where[k] for k in keys]]

    def merged(self, current: Row, fooled: np.ndarray, new: list[int]) -> Row:
        """This stored row completed by the current run's columns `new` of `fooled` [T,S] (current order)."""
        assert self.fooled is not None
        keys = [current.target_keys[i] for i in new]
        return Row(self.target_keys + keys, np.concatenate([self.correct, current.correct[new]]), self.ids,
                   self.labels, np.concatenate([self.fooled, fooled[new]]))


def read_row(path: Path) -> Row | None:
    """The stored row at `path`; None when absent. A damaged file is moved aside (warning)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            return Row([str(k) for k in cached["target_keys"]], cached["correct"], cached["sample_ids"],
                       cached["labels"], cached["fooled"])
    except Exception as err:  # noqa: BLE001 - truncated/garbled files raise BadZipFile, EOFError, zlib.error, ...
        move_aside(path, f"{type(err).__name__}: {err}")
        return None


def save_row(path: Path, row: Row) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, fooled=row.fooled, target_keys=np.asarray(row.target_keys), correct=row.correct,
                                sample_ids=row.ids, labels=row.labels)


def read_adversarial(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The stored adversarial images of a row (uint8 [S,C,H,W], memory-mapped); None when absent or damaged."""
    adv = adv_path(path)
    if not adv.is_file():
        return None
    try:
        images = np.load(adv, mmap_mode="r", allow_pickle=False)
        if images.dtype != np.uint8 or images.shape != shape:
            raise ValueError(f"{images.dtype} {images.shape}, expected uint8 {shape}")
        return images
    except Exception as err:  # noqa: BLE001 - truncated files raise ValueError, OSError, ...
        move_aside(adv, f"{type(err).__name__}: {err}")
        return None


def to_levels(x_adv: torch.Tensor) -> torch.Tensor:
    """An adversarial batch as uint8; refuses images off the 8-bit levels (they would not be stored losslessly)."""
    levels = torch.round(x_adv.float() * 255)
    if not torch.equal(levels / 255, x_adv.float()):
        raise SatlabError("sat.store_adversarial needs adversarial images on 8-bit levels: set attack.quantize=true "
                          "(or sat.store_adversarial=false)")
    return levels.to(torch.uint8)


def from_levels(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """Stored uint8 images as the float [0,1] batch the attack returned (bit-identical)."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).float() / 255
