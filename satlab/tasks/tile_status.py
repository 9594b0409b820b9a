"""Where a tiled map stands (`sat.status=true`): which tiles are done, partly done (which sources) or missing,
from the records cache alone (no model runs), the command that submits just the tiles that are not done, and
where each tile's job ran and logged.

Every tile job records where it runs when it starts: `<cache>/tiles/<map key>/<tile>.json` holds its run
folder, the command line's overrides and, in a SLURM job (submitit), its job id and log files
(`satlab.tasks.cluster.job_place`). The map key is the map's models (content keys), what else determines their
rows (`satlab.sat.runtime.records_context`) and `sat.tiles`, so maps that share a cache keep apart. A tile is
done when every source's row holds every target of the tile; the rows are read with `satlab.sat.cache.RowStore`
as the jobs write them (atomically, so a cancelled job leaves whole rows or none).

    satlab experiment=paper69_imagenet paths.cache_dir=/shared/satlab-cache sat.tiles=8x1 sat.status=true
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

from satlab.sat.cache import RowStore, image_dtype
from satlab.sat.precision import image_order, image_rank, parse_precision
from satlab.sat.schedule import Tile
from satlab.sat.stopping import pair_done
from satlab.utils import plain, stable_hash, write_json

RECORDS = "tiles"  # the folder of the job records in the cache
LEFT_OUT = ("hydra.sweep.dir", "hydra.sweep.subdir", "hydra.run.dir", "hydra.mode")  # a new sweep: jobs from 0


def map_key(names: Sequence[str], keys: Sequence[str], context: dict[str, Any], tiles: Any) -> str:
    """The key of a tiled map's job records: its models by name and content key, what else determines their
    rows (`records_context`) and the tiles (`sat.tiles` as given).

    Args:
        names, keys: the models and their content keys; context: `records_context`; tiles: `sat.tiles`.
    """
    return stable_hash({"models": list(zip(names, keys)), "context": context, "tiles": tiles})


def record_path(cache_dir: str | Path, key: str, index: int) -> Path:
    return Path(cache_dir) / RECORDS / key / f"{index}.json"


def record_job(cache_dir: str | Path, key: str, tile: Tile, run_dir: Path, task: Sequence[str],
               launcher: Sequence[str], place: dict[str, Any]) -> Path:
    """Record, when a tile job starts, where it runs (atomically; a later attempt of the tile replaces it).

    Args:
        cache_dir: the records cache; key: `map_key`; tile: the job's tile (with its index).
        run_dir: the job's run folder; task: its overrides (Hydra's `overrides.task`); launcher: the sweep's
            Hydra overrides (`overrides.hydra`: the launcher and its settings).
        place: the job's SLURM id and log files (`satlab.tasks.cluster.job_place`; {} outside SLURM).
    """
    return write_json(record_path(cache_dir, key, int(tile.index)),  # type: ignore[arg-type]
                      {"tile": tile.index, "run_dir": str(run_dir), "task_overrides": list(task),
                       "hydra_overrides": list(launcher), "started": time.strftime("%Y-%m-%d %H:%M:%S"), **place})


def read_record(cache_dir: str | Path, key: str, index: int) -> dict[str, Any] | None:
    try:
        found = json.loads(record_path(cache_dir, key, index).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


@dataclass
class TileState:
    """How far one tile is: per source, how many of the tile's targets its row holds."""

    tile: Tile
    held: dict[str, int] = field(default_factory=dict)  # source -> targets of the tile its row holds
    owned: dict[str, int] | None = None  # source -> targets it computes (a map at a stated precision), else all

    def of(self, source: str) -> int:
        """How many targets the tile computes for `source`."""
        return len(self.tile.targets) if self.owned is None else self.owned[source]

    @property
    def done(self) -> bool:
        return all(self.held[s] == self.of(s) for s in self.tile.sources)

    @property
    def started(self) -> bool:
        return any(self.held.values())

    def label(self) -> str:
        if self.done:
            return "done"
        return "partly done" if self.started else "missing"

    def sources_line(self) -> str:
        """Which sources are done, partly done (k of n targets) and not started."""
        groups = {"done": [s for s in self.tile.sources if self.held[s] == self.of(s)],
                  "partly": [f"{s} ({self.held[s]} of {self.of(s)} targets)" for s in self.tile.sources
                             if 0 < self.held[s] < self.of(s)],
                  "not started": [s for s in self.tile.sources if self.held[s] == 0 < self.of(s)]}
        return "; ".join(f"{what}: {', '.join(items)}" for what, items in groups.items() if items)


def tile_states(store: RowStore, keys: dict[str, str], tiles: Sequence[Tile], precision: float | None = None,
                seed: int = 0) -> list[TileState]:
    """Each tile's state from the rows in the cache (each row read once).

    Args:
        store: the map's rows (`RowStore` on the cache, with the map's context); keys: model -> content key.
        tiles: the map's tiles (`sat.tiles`).
        precision, seed: a map at a stated precision (`sat.precision`, its run seed): a tile computes both
            directions of its pairs (A, B) with A before B in the model set, and its models' own columns
            (`satlab.sat.stopping.open_cells`); such a pair is held when it is done by the stopping rule
            (`satlab.sat.stopping.pair_done`). Without it, a (source, target) is held when it saw every image.
    """
    rows = {s: store.read(s) for s in dict.fromkeys(s for t in tiles for s in (*t.sources, *t.targets))}
    total = len(store.ids)
    rank = image_rank(image_order(seed, total))

    def held(source: str, target: str) -> bool:
        row = rows[source]
        if precision is None or source == target or row is None:
            return row is not None and row.reach(keys[target]) >= (total if precision is None else 1)
        return pair_done(row, rows[target], keys[source], keys[target], rank, precision)[1]

    index = {n: i for i, n in enumerate(keys)}

    def computes(tile: Tile, source: str) -> list[str]:
        return [t for t in tile.targets if precision is None or index[source] <= index[t]]

    return [TileState(tile, {s: sum(held(s, t) for t in computes(tile, s)) for s in tile.sources},
                      None if precision is None else {s: len(computes(tile, s)) for s in tile.sources})
            for tile in tiles]


def resubmit_command(states: Sequence[TileState], records: dict[int, dict[str, Any]], own: Sequence[str]) -> str:
    """The command that submits the tiles that are not done: the overrides a tile job recorded (else this
    command's own), with `sat.tile` listing those tiles and the sweep's Hydra overrides (its launcher) but no
    sweep folder (a new sweep numbers its jobs from 0; Hydra picks a new folder).

    Args:
        states: `tile_states`; records: the tiles' job records by index; own: this command's overrides.
    """
    todo = [s.tile.index for s in states if not s.done]
    recorded = next((r for r in records.values() if r.get("task_overrides")), None)
    task = recorded["task_overrides"] if recorded else list(own)
    launcher = recorded.get("hydra_overrides", []) if recorded else []
    kept = [o for o in task if _key(o) not in ("sat.tile", "sat.status", "sat.assemble")]
    kept += [o for o in launcher if _key(o) not in LEFT_OUT]
    if not recorded:
        kept += ["hydra/launcher=submitit_slurm", "<your hydra.launcher.* settings>"]
    return " ".join(["satlab", "-m", *(shlex.quote(o) for o in kept), f"sat.tile={','.join(map(str, todo))}"])


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def report(states: Sequence[TileState], records: dict[int, dict[str, Any]], own: Sequence[str]) -> str:
    """The status view as text: a line per tile (state, sources, its job and log), the counts, and the command
    that submits the tiles that are not done (or the one that assembles the map).

    Args:
        states: `tile_states`; records: the tiles' job records by index; own: this command's overrides.
    """
    lines = []
    for state in states:
        tile, record = state.tile, records.get(state.tile.index, {})  # type: ignore[arg-type]
        line = f"tile {tile.index} ({len(tile.sources)} source(s) x {len(tile.targets)} target(s)): {state.label()}"
        if state.started and not state.done:
            line += f" - {state.sources_line()}"
        lines.append(line)
        if record:
            job = f"SLURM job {record['slurm_job']}, " if record.get("slurm_job") else ""
            where = f"log {record['log']}" if record.get("log") else f"run folder {record.get('run_dir')}"
            lines.append(f"    {job}started {record.get('started')}: {where}")
        elif not state.done:
            lines.append("    no job has started its work yet (a job records itself once its models are open)")
    counts = {label: sum(s.label() == label for s in states) for label in ("done", "partly done", "missing")}
    lines.append(f"{len(states)} tile(s): " + ", ".join(f"{n} {label}" for label, n in counts.items()))
    if counts["done"] == len(states):
        kept = [shlex.quote(o) for o in own if _key(o) not in ("sat.status",)]
        lines.append("every tile is done; the map: " + " ".join(["satlab", *kept, "sat.assemble=true"]))
    else:
        lines.append("submit the tiles that are not done (a running job's tile shows as partly done or missing):")
        lines.append("    " + resubmit_command(states, records, own))
        if any(_key(o) == "hydra.sweep.dir" for r in records.values() for o in r.get("hydra_overrides", [])):
            lines.append("    (without the sweep's hydra.sweep.dir: a new sweep numbers its jobs from 0, so it needs a "
                         "folder of its own; give one with hydra.sweep.dir=...)")
    return "\n".join(lines)


def tiles_context(cfg: DictConfig, names: Sequence[str], keys: Sequence[str], attack: Any, data: Any
                  ) -> tuple[str, dict[str, Any]]:
    """(`map_key`, `records_context`) of the tiled map this run belongs to.

    Args:
        cfg: the run's config; names, keys: the models and their content keys; attack, data: as the run has them.
    """
    from satlab.sat.runtime import records_context
    from satlab.tasks.common import trainer_config

    context = records_context(attack, data, int(cfg.seed), trainer_config(cfg))
    return map_key(names, keys, context, plain(cfg.sat.tiles)), context


def record_this_job(cfg: DictConfig, names: Sequence[str], keys: Sequence[str], attack: Any, data: Any, tile: Tile,
                    run_dir: Path) -> Path:
    """`record_job` for this run (a tile job of `sat.tiles`), with Hydra's overrides and the SLURM job.

    Args:
        cfg: the run's config; names, keys: the models and their content keys; attack, data: as the run has them;
        tile: the job's tile; run_dir: its run folder.
    """
    from hydra.core.hydra_config import HydraConfig

    from satlab.tasks.cluster import job_place

    key, _ = tiles_context(cfg, names, keys, attack, data)
    overrides = HydraConfig.get().overrides if HydraConfig.initialized() else None
    task = list(overrides.task) if overrides is not None else []
    launcher = list(overrides.hydra) if overrides is not None else []
    return record_job(cfg.paths.cache_dir, key, tile, run_dir, task, launcher, job_place())


def show(cfg: DictConfig, names: Sequence[str], keys: Sequence[str], attack: Any, data: Any,
         tiles: Sequence[Tile]) -> dict[str, Any]:
    """`sat.status=true`: print where the tiled map stands (`report`) and return it by tile (no model runs).

    Args:
        cfg: the run's config; names, keys: the models and their content keys; attack, data: as the run has them;
        tiles: the map's tiles (`sat.tiles`).
    """
    from hydra.core.hydra_config import HydraConfig

    from satlab.data import labels_and_ids

    key, context = tiles_context(cfg, names, keys, attack, data)
    labels, ids = labels_and_ids(data)
    store = RowStore(cfg.paths.cache_dir, list(names), list(keys), context, ids, labels, (0,), image_dtype(True))
    states = tile_states(store, dict(zip(names, keys)), tiles, parse_precision(cfg.sat.get("precision")), int(cfg.seed))
    records = {t.index: r for t in tiles if (r := read_record(cfg.paths.cache_dir, key, int(t.index))) is not None}
    own = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    print(report(states, records, own))  # type: ignore[arg-type]
    return {"tiles": {int(s.tile.index): {"state": s.label(), "held": s.held,  # type: ignore[arg-type]
                                          **records.get(s.tile.index, {})} for s in states}}
