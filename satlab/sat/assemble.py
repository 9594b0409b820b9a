"""A map from the records cache alone: the rows that tile and shard jobs wrote, checked and stacked into the
records of the whole map, without running any model (`sat.assemble=true`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset

from satlab.attacks import Attack
from satlab.data import labels_and_ids
from satlab.sat.cache import RowStore, image_dtype
from satlab.sat.engine import EngineResult
from satlab.sat.precision import image_order, image_rank
from satlab.sat.records import Records
from satlab.sat.runtime import make_trainer, row_context, use_amp
from satlab.sat.schedule import Tile, check_cover, missing_tiles
from satlab.sat.stopping import adaptive_records, unfinished
from satlab.utils import SatlabError, plain


def assemble_records(
    names: Sequence[str],
    model_keys: Sequence[str],
    data: Dataset,
    attack: Attack,
    cache_dir: str | Path,
    seed: int = 0,
    trainer_cfg: Mapping[str, Any] | None = None,
    amp: bool | None = None,
    tiles: Sequence[Tile] | None = None,
    precision: float | None = None,
) -> EngineResult:
    """The records of a map from its cached rows only (written by tile or shard jobs); no model is run.

    Rows that lack pairs raise SatlabError naming the missing tiles (or sources), and rows whose columns were
    computed with other clean predictions than their targets' own rows raise too, before anything is written.
    A map at a stated precision (`precision`, as its tiles ran) lacks a pair until the pair's interval reached h or
    it saw every image; a map without it lacks every column that does not cover every image.
    """
    names, keys = list(names), dict(zip(names, model_keys))
    if tiles is not None:
        check_cover(names, tiles)
    labels, ids = labels_and_ids(data)
    trainer, _ = make_trainer({**(plain(trainer_cfg) or {}), "enable_progress_bar": False})
    context = row_context(attack, data, seed, trainer, use_amp(amp, trainer))
    store = RowStore(cache_dir, names, list(model_keys), context, ids, labels, (0,), image_dtype(True))
    rows = {n: store.read(n) for n in names}
    lacking = {s: [t for t in names if r is None or r.reach(keys[t]) < len(ids)] for s, r in rows.items()}
    if precision is not None and all(r is not None for r in rows.values()):
        rank = image_rank(image_order(seed, len(ids)))
        lacking = unfinished(names, keys, rows, rank, precision)  # type: ignore[arg-type]
    lacking = {s: t for s, t in lacking.items() if t}
    if lacking:
        if tiles is not None:
            gone = missing_tiles(tiles, lacking)
            raise SatlabError(f"cannot assemble the map: {len(gone)} of {len(tiles)} tile(s) are not in the cache: "
                              f"sat.tile={','.join(str(t.index) for t in gone)} (run them with the same model set, "
                              "dataset, attack, seed and trainer)")
        raise SatlabError(f"cannot assemble the map: no complete cached row for {len(lacking)} source(s): "
                          f"{', '.join(lacking)} (run the shards or tiles that compute them, with the same model "
                          "set, dataset, attack, seed and trainer)")
    own = {t: rows[t].own(keys[t]) for t in names}  # type: ignore[union-attr]
    bad = sorted({s for s in names for t in names
                  if not np.array_equal(rows[s].own(keys[t]), own[t])})  # type: ignore[union-attr]
    if bad:
        raise SatlabError(f"cannot assemble the map: the cached rows of {', '.join(bad)} were computed with other "
                          "clean predictions than their targets' own rows (another device?); recompute those "
                          "sources (delete their rows) or run the map in one job")
    order = [keys[n] for n in names]
    correct = np.stack([own[n] for n in names])
    fooled = np.stack([rows[n].columns(order) for n in names])  # type: ignore[union-attr]
    records = Records(names, ids, labels, correct, fooled)
    if precision is not None:
        seen = np.stack([rows[n].columns(order, "seen") for n in names])  # type: ignore[union-attr]
        records = adaptive_records(records, seen, image_order(seed, len(ids)))
    return EngineResult(records, reused=names, context=context)
