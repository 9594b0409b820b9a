"""The files that are the contracts between stages: `records.npz` and matrices in the paper's CSV format.

`records.npz`: `models` [N] str, `sample_ids` [S] int, `labels` [S] int, `correct` [N,S] bool,
`fooled` [N,N,S] bool (source, target, sample); a map at a stated precision (`sat.precision`) adds `image_order` [S]
(the seeded order its images were taken in) and `images_used` [N,N] int (pair (A, B) used the images
`image_order[:images_used[A, B]]`, symmetric; the diagonal: the source's attacked images). Matrix CSV: header row and
first column are model names (the format of the paper's released `SAT_release.csv`). Every write is atomic.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from satlab.utils import SatlabError, atomic_path, write_csv

RECORD_KEYS = ("models", "sample_ids", "labels", "correct", "fooled")
PRECISION_KEYS = ("image_order", "images_used")  # only in maps at a stated precision


@dataclass
class Records:
    """Per-sample transfer records of N models on S samples."""

    models: list[str]
    sample_ids: np.ndarray
    labels: np.ndarray
    correct: np.ndarray
    fooled: np.ndarray
    image_order: np.ndarray | None = None
    images_used: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.models = [str(m) for m in self.models]
        self.sample_ids = np.asarray(self.sample_ids, dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.correct = np.asarray(self.correct, dtype=bool)
        self.fooled = np.asarray(self.fooled, dtype=bool)
        n, s = len(self.models), len(self.sample_ids)
        expected = {"labels": (s,), "correct": (n, s), "fooled": (n, n, s)}
        if (self.image_order is None) != (self.images_used is None):
            raise SatlabError("records: 'image_order' and 'images_used' come together (a map at a stated precision)")
        if self.image_order is not None:
            self.image_order = np.asarray(self.image_order, dtype=np.int64)
            self.images_used = np.asarray(self.images_used, dtype=np.int64)
            expected |= {"image_order": (s,), "images_used": (n, n)}
            if not np.array_equal(np.sort(self.image_order), np.arange(s)):
                raise SatlabError("records: 'image_order' is not an order of the samples (a permutation of 0..S-1)")
        for key, shape in expected.items():
            if getattr(self, key).shape != shape:
                raise SatlabError(
                    f"records: '{key}' has shape {getattr(self, key).shape}, expected {shape} for {n} models "
                    f"and {s} samples"
                )

    def scope(self) -> np.ndarray | None:
        """Which images each pair uses, [N,N,S] bool (within X_AB or not), for a map at a stated precision; None:
        every pair uses every image. What the metric functions take as `scope`."""
        if self.images_used is None:
            return None
        rank = np.empty(len(self.sample_ids), dtype=np.int64)
        rank[self.image_order] = np.arange(len(rank))
        return rank[None, None, :] < self.images_used[:, :, None]

    def subset(self, rows: Sequence[int]) -> "Records":
        """The records of the models at `rows` (in that order)."""
        rows = list(rows)
        used = None if self.images_used is None else self.images_used[np.ix_(rows, rows)]
        return Records([self.models[i] for i in rows], self.sample_ids, self.labels, self.correct[rows],
                       self.fooled[np.ix_(rows, rows)], self.image_order, used)


def save_records(path: str | os.PathLike, records: Records) -> Path:
    """Write `records.npz` atomically (compressed); the keys of a map at a stated precision only when it is one."""
    keys = RECORD_KEYS + (PRECISION_KEYS if records.images_used is not None else ())
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **{k: np.asarray(getattr(records, k)) for k in keys})
    return Path(path)


def load_records(path: str | os.PathLike) -> Records:
    """Read `records.npz`; a missing file, key or inconsistent shape raises SatlabError."""
    path = Path(path)
    if not path.is_file():
        raise SatlabError(f"records file '{path}' not found; it is written by `satlab task=sat`")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in RECORD_KEYS if k not in data]
            if missing:
                raise SatlabError(f"records file '{path}' lacks {missing}; expected keys {list(RECORD_KEYS)}")
            return Records(**{k: data[k] for k in RECORD_KEYS + PRECISION_KEYS if k in data or k in RECORD_KEYS})
    except (OSError, ValueError) as err:
        raise SatlabError(f"records file '{path}' is not a valid .npz file ({err})") from None


def write_matrix(path: str | os.PathLike, names: Sequence[str], matrix: np.ndarray) -> Path:
    """Write a square matrix as CSV with model names as header row and first column (atomic)."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (len(names), len(names)):
        raise ValueError(f"matrix shape {matrix.shape} does not match {len(names)} names")
    return write_csv(path, pd.DataFrame(matrix, index=list(names), columns=list(names)), index=True,
                     float_format="%.10g")


SAT_MAX = math.log(100.0)  # SAT is the log of a transfer rate in %: 100 % at most
SAT_SLACK = 1e-6  # CSV rounding


def read_matrix(path: str | os.PathLike, symmetric_tol: float | None = None,
                sat: bool = False) -> tuple[list[str], np.ndarray]:
    """Read a matrix CSV in the paper's format and validate it; every problem raises one clear SatlabError.

    Checks: the file exists and parses, it is square, row names equal column names (same order), every cell is
    a number (NaN allowed only where written as empty/NaN); when `symmetric_tol` is given, |M - M^T| <= tol and a
    cell is empty only where its mirror is (a pair has one |X_AB|, so both or neither direction has a value);
    with `sat`, no cell above ln 100 (a transfer rate above 100 %).
    """
    path = Path(path)
    if not path.is_file():
        raise SatlabError(f"matrix file '{path}' not found")
    try:
        frame = pd.read_csv(path, index_col=0, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise SatlabError(f"matrix file '{path}' is not a readable CSV ({str(err).splitlines()[0]})") from None
    rows = [str(r).strip() for r in frame.index]
    cols = [str(c).strip() for c in frame.columns]
    if not cols and rows:  # one field per line: another separator (a spreadsheet's ';' or a tab)?
        header = path.read_text(errors="replace").splitlines()[0]
        other = next((f"'{sep}'" if sep != "\t" else "tabs" for sep in (";", "\t", "|") if sep in header), None)
        said = f"its lines are separated by {other}, not commas" if other else "its header line has no comma"
        raise SatlabError(f"matrix '{path}' has {len(rows) + 1} lines but no columns: {said}; write it as a "
                          "comma-separated CSV (the paper's format: header row and first column = model names)")
    if len(rows) != len(cols):
        raise SatlabError(f"matrix '{path}' is not square: {len(rows)} rows x {len(cols)} columns")
    if rows != cols:
        bad = next(i for i, (r, c) in enumerate(zip(rows, cols)) if r != c)
        raise SatlabError(
            f"matrix '{path}': row {bad + 1} is '{rows[bad]}' but column {bad + 1} is '{cols[bad]}'; "
            "the first column must list the header's model names in the same order"
        )
    if len(set(rows)) != len(rows):
        raise SatlabError(f"matrix '{path}' names a model twice")
    values = np.empty((len(rows), len(cols)))
    for i, row in enumerate(frame.itertuples(index=False)):
        for j, cell in enumerate(row):
            text = str(cell).strip()
            try:
                values[i, j] = float(text) if text not in ("", "nan", "NaN") else np.nan
            except ValueError:
                raise SatlabError(
                    f"matrix '{path}': cell ({rows[i]}, {cols[j]}) is '{text}', not a number"
                ) from None
            if np.isinf(values[i, j]):
                raise SatlabError(
                    f"matrix '{path}': cell ({rows[i]}, {cols[j]}) is '{text}'; cells must be finite numbers "
                    "(a pair that never transfers is ln eps_s, a pair with no jointly correct sample is empty/NaN)"
                )
            if sat and values[i, j] > SAT_MAX + SAT_SLACK:
                raise SatlabError(
                    f"matrix '{path}': cell ({rows[i]}, {cols[j]}) is {text}, above ln 100 = {SAT_MAX:.4f}; a SAT "
                    "value is the natural log of a transfer rate in % (at most 100 %), so this is not a SAT matrix "
                    "in the paper's format"
                )
    if symmetric_tol is not None:
        lone = np.isnan(values) & ~np.isnan(values.T)
        if lone.any():
            i, j = np.argwhere(lone)[0]
            raise SatlabError(
                f"matrix '{path}' is not symmetric: ({rows[i]}, {cols[j]}) is empty but ({cols[j]}, {rows[i]}) = "
                f"{values[j, i]:.6g}; a pair has one set of jointly correct images, so both cells have a value or "
                "both are empty"
            )
        diff = np.abs(values - values.T)
        worst = np.nanargmax(np.where(np.isnan(diff), -1, diff)) if diff.size else 0
        i, j = np.unravel_index(worst, diff.shape)
        if diff.size and np.nan_to_num(diff[i, j]) > symmetric_tol:
            raise SatlabError(
                f"matrix '{path}' is not symmetric: ({rows[i]}, {cols[j]}) = {values[i, j]:.6g} but "
                f"({cols[j]}, {rows[i]}) = {values[j, i]:.6g} (tolerance {symmetric_tol})"
            )
    return rows, values
