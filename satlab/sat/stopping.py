"""Which pairs of a map at a stated precision (`sat.precision`, docs/precision.md) still take images, from the rows
of the records cache alone: the engine's rounds (`open_cells`), `sat.assemble` (`unfinished`) and `sat.status`
(`pair_done`) decide by the same rule, and the map's records say which images each pair used
(`adaptive_records`). No torch, no Hydra.

A pair (A, B) has seen the images of the map's seeded order (`satlab.sat.precision.image_order`) that both its
directions cover: row A's column B and row B's column A (`Row.reach`). It is done when its interval on those
(`satlab.sat.precision.sat_interval`) is within +-h, or when they are every image. A tile computes both directions
of its pairs (A, B) with A before B in the model set, so every pair of a map belongs to one tile.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from satlab.sat.cache import Row
from satlab.sat.precision import half_width, image_rank, pair_counts
from satlab.sat.records import Records
from satlab.sat.schedule import Tile


def pair_done(ra: Row | None, rb: Row | None, ka: str, kb: str, rank: np.ndarray, h: float) -> tuple[int, bool]:
    """A pair from its two rows (None: no row yet) and its models' content keys: the images of the order both its
    directions cover, and whether it is done (its interval on those is within +-h, or they are every image).

    Args:
        rank: each dataset position's place in the map's order [S] (`satlab.sat.precision.image_rank`).
    """
    seen = min(ra.reach(kb) if ra is not None else 0, rb.reach(ka) if rb is not None else 0)
    if seen == 0:
        return 0, False
    both = ra.own(ka) & rb.own(kb) & (rank < seen)  # type: ignore[union-attr, operator]
    counts = pair_counts(both, ra.own(kb, "fooled"), rb.own(ka, "fooled"))  # type: ignore[union-attr, arg-type]
    return seen, bool(half_width(*counts) <= h) or seen >= len(rank)


def open_cells(tile: Tile, rows: Mapping[str, Row | None], keys: Mapping[str, str], rank: np.ndarray, upto: int,
               h: float) -> dict[str, list[str]]:
    """One round's work of `tile`: per source, the targets whose pair must see the first `upto` images of the order
    because it is not done (both directions of the tile's pairs (A, B), A before B in `keys`' order, the model set's),
    and the own column of a model of the tile without a row. A pair that has seen `upto` images already waits for a
    later round.

    Args:
        rows: the rows of the tile's models (None: no row yet); keys: model -> content key, in model-set order.
    """
    index = {n: i for i, n in enumerate(keys)}
    pairs = sorted(((s, t) for s, t in tile.pairs() if index[s] < index[t]), key=lambda p: (index[p[0]], index[p[1]]))
    cells: dict[str, list[str]] = {}
    for a, b in pairs:
        seen, done = pair_done(rows[a], rows[b], keys[a], keys[b], rank, h)
        if seen >= upto or done:
            continue
        cells.setdefault(a, []).append(b)
        cells.setdefault(b, []).append(a)
    for s in tile.sources:
        if s in tile.targets and rows[s] is None:
            cells.setdefault(s, []).append(s)  # a model without pairs here still gets its own column
    return cells


def unfinished(names: list[str], keys: Mapping[str, str], rows: Mapping[str, Row], rank: np.ndarray,
               h: float) -> dict[str, list[str]]:
    """Per source, the targets of the pairs (A, B), A before B, that are not done, and the sources without their
    own column: what `sat.assemble` still lacks (every model has a row)."""
    lacking: dict[str, list[str]] = {}
    for i, a in enumerate(names):
        if rows[a].reach(keys[a]) == 0:
            lacking.setdefault(a, []).append(a)
        for b in names[i + 1:]:
            if not pair_done(rows[a], rows[b], keys[a], keys[b], rank, h)[1]:
                lacking.setdefault(a, []).append(b)
    return lacking


def adaptive_records(records: Records, seen: np.ndarray, order: np.ndarray) -> Records:
    """The records of a map at a stated precision from the full-size arrays of its rows and the images each
    (source, target) column covers, `seen` [N,N]: a pair uses the images both its directions cover (the diagonal:
    the source's attacked images), and `fooled` is False past them."""
    used = np.minimum(seen, seen.T)
    np.fill_diagonal(used, np.diagonal(seen))
    inside = image_rank(order)[None, None, :] < used[:, :, None]
    return Records(records.models, records.sample_ids, records.labels, records.correct, records.fooled & inside, order,
                   used)
