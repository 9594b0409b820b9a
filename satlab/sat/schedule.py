"""The SAT engine's scheduler: what one job of a map computes. Pure Python (no torch, no files), so every
decision the engine takes is testable on its own.

A map of N models is the N x N grid of (source, target) pairs. A *tile* is a block of sources x a block of
targets: the whole map (one job), a shard of its sources (`sat.shard`: all targets), or one cell of a grid or of
a list of tiles (`sat.tiles` + `sat.tile`), e.g. one job of a SLURM array. Every job meets the others in the
records cache, where each source has one row (`satlab.sat.cache`): its clean correctness, its adversarial
images and one column of `fooled` per target computed so far. A row only grows.

For a tile, given what the rows hold (`RowState`), `plan_tile` says:

    attack    the sources without a row, or whose row lacks targets and has no stored images (phase 1: one
              model resident, its clean pass and ONE attack of the images it classifies correctly)
    columns   per source, the targets to evaluate (phase 2)
    blocks    the targets of phase 2 in blocks that fit the memory budget (`Budget`): each block's models are
              resident together and every source's images are read once per block
    reuse     the sources whose rows already hold every target of the tile

    >>> names, keys = ["a", "b", "c"], {"a": "ka", "b": "kb", "c": "kc"}
    >>> rows = {"a": RowState.of(["ka", "kb", "kd"], images=True), "b": RowState.of(["kb", "ka"], images=False)}
    >>> plan = plan_tile(whole_map(names), keys, rows, {}, Budget(models=2))
    >>> plan.attack, plan.columns, plan.blocks, plan.lacking
    (['b', 'c'], {'a': ['c'], 'b': ['c'], 'c': ['a', 'b']}, [['a', 'b'], ['c']], {'a': ['c'], 'b': ['c']})
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from satlab.schema import shown
from satlab.utils import SatlabError


@dataclass(frozen=True)
class Tile:
    """The pairs one job computes: every source in `sources` against every target in `targets`."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    index: int | None = None  # its position in `sat.tiles` (None: the whole map or a shard)

    def pairs(self) -> set[tuple[str, str]]:
        return {(s, t) for s in self.sources for t in self.targets}

    def describe(self) -> str:
        label = f"tile {self.index}: " if self.index is not None else ""
        return f"{label}{len(self.sources)} source(s) x {len(self.targets)} target(s)"


def whole_map(names: Sequence[str]) -> Tile:
    return Tile(tuple(names), tuple(names))


@dataclass(frozen=True)
class Budget:
    """How many models phase 2 keeps resident at once: a count, or bytes of weights (parameters + buffers)."""

    models: int | None = None
    nbytes: int | None = None
    text: str = ""  # as the user wrote it

    def describe(self) -> str:
        if self.text:
            return self.text
        if self.models is not None:
            return f"{self.models} model(s)"
        return human_size(self.nbytes) if self.nbytes is not None else "unlimited"


@dataclass(frozen=True)
class RowState:
    """What a source's cached row holds: the content keys of the targets it has columns for, whether its
    adversarial images are at hand (stored in the cache, or kept by this run), and, in maps at a stated precision,
    the columns that cover only the first images of the map's order (`partial`: key -> images covered). The
    source's own column covers as many images as its adversarial images do."""

    targets: frozenset[str] = frozenset()
    images: bool = False
    exists: bool = False
    partial: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, targets: Sequence[str], images: bool) -> "RowState":
        return cls(frozenset(targets), images, True)

    def reach(self, key: str) -> float:
        """Images of the order the column of `key` covers: 0 without a column, inf when it covers every image."""
        return self.partial.get(key, math.inf) if key in self.targets else 0


@dataclass
class Plan:
    attack: list[str] = field(default_factory=list)
    columns: dict[str, list[str]] = field(default_factory=dict)
    blocks: list[list[str]] = field(default_factory=list)
    reuse: list[str] = field(default_factory=list)
    lacking: dict[str, list[str]] = field(default_factory=dict)  # sources with a row that lacks targets
    starts: dict[tuple[str, str], int] = field(default_factory=dict)  # (source, target): images its column covers

    @property
    def done(self) -> bool:
        return not self.attack and not self.columns


def plan_tile(tile: Tile, keys: Mapping[str, str], rows: Mapping[str, RowState], sizes: Mapping[str, int | None],
              budget: Budget, upto: float = math.inf, cells: Mapping[str, Sequence[str]] | None = None) -> Plan:
    """The work of `tile` given the rows' states (`rows[name]`, absent: no row); see the module docstring.

    A source's own column (its white-box success) is made in phase 1, so an attacked source's row holds it.
    `upto` and `cells` are for maps at a stated precision: the columns must cover the first `upto` images of the
    map's order (inf: every image), and `cells` names each source's targets this round (default: the tile's).
    """
    plan = Plan()
    wanted = {s: list(tile.targets) for s in tile.sources} if cells is None else cells
    for source, targets in wanted.items():
        row = rows.get(source, RowState())
        needed = [t for t in targets if row.reach(keys[t]) < upto]
        if row.exists and not needed:
            plan.reuse.append(source)
            continue
        if row.exists:
            plan.lacking[source] = needed
        if not row.exists or not row.images or row.reach(keys[source]) < upto:
            plan.attack.append(source)
            needed = [t for t in needed if t != source]
        if needed:
            plan.columns[source] = needed
            plan.starts |= {(source, t): int(r) for t in needed if 0 < (r := row.reach(keys[t])) < math.inf}
    evaluated = {t for targets in plan.columns.values() for t in targets}
    order = [*tile.targets, *(s for s in tile.sources if s not in tile.targets)]
    plan.blocks = target_blocks([t for t in order if t in evaluated], sizes, budget)
    return plan


def target_blocks(targets: Sequence[str], sizes: Mapping[str, int | None], budget: Budget) -> list[list[str]]:
    """`targets` in order, cut into consecutive blocks that fit `budget` (a target of unknown size counts as
    fitting). A byte budget smaller than one model raises SatlabError naming the model."""
    if budget.models is not None:
        return [list(targets[i:i + budget.models]) for i in range(0, len(targets), budget.models)]
    if budget.nbytes is None:
        return [list(targets)] if targets else []
    blocks: list[list[str]] = []
    used = math.inf
    for target in targets:
        size = sizes.get(target) or 0
        if size > budget.nbytes:
            raise SatlabError(f"sat.memory_budget={budget.describe()} is smaller than model '{target}' "
                              f"({human_size(size)} of weights); give at least {math.ceil(size / 2**20)}MiB, "
                              "a number of models (e.g. sat.memory_budget=1), or auto")
        if used + size > budget.nbytes:
            blocks.append([])
            used = 0
        blocks[-1].append(target)
        used += size
    return blocks


def human_size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.3g} MiB"


def parse_budget(value: Any) -> Budget | None:
    """`sat.memory_budget`: auto (None here: the engine asks the device), a number of models (>= 1), or a size
    such as `4GiB` / `512MiB`. Bad values raise SatlabError."""
    if value is None or str(value).strip().lower() == "auto":
        return None
    hint = "use auto, a number of models (e.g. 4) or a size (e.g. 8GiB, 512MiB)"
    if isinstance(value, bool):
        raise SatlabError(f"sat.memory_budget={value}: {hint}")
    if isinstance(value, int) or re.fullmatch(r"\s*-?\d+\s*", str(value)):
        models = int(value)
        if models < 1:
            raise SatlabError(f"sat.memory_budget={models}: phase 2 needs at least one model resident; {hint}")
        return Budget(models=models, text=str(value).strip())
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(GiB|MiB|GB|MB)\s*", str(value))
    if not match:
        raise SatlabError(f"sat.memory_budget={value}: {hint}")
    unit = {"GiB": 2**30, "MiB": 2**20, "GB": 10**9, "MB": 10**6}[match.group(2)]
    nbytes = int(float(match.group(1)) * unit)
    if nbytes <= 0:
        raise SatlabError(f"sat.memory_budget={value} holds no model; {hint}")
    return Budget(nbytes=nbytes, text=str(value).strip())


# ---------------------------------------------------------------------------------------------------- tiles


def _split(names: Sequence[str], spec: str, what: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", spec)
    if not match:
        raise SatlabError(f"{what} must be 'i/n' (part i of n, 0 <= i < n) or a list of model names, got '{spec}'")
    i, n = int(match.group(1)), int(match.group(2))
    if n < 1 or not 0 <= i < n:
        raise SatlabError(f"{what}={spec}: shard index out of range; use i/n with n >= 1 and 0 <= i < n "
                          f"(e.g. {what}=0/{max(n, 2)} ... {max(n, 2) - 1}/{max(n, 2)})")
    if n > len(names):
        raise SatlabError(f"{what}={spec}: {n} shards for {len(names)} models would leave shards empty; "
                          f"use n <= {len(names)}")
    return i, n


def named(names: Sequence[str], chosen: Any, what: str) -> tuple[str, ...]:
    """`chosen` (a list of model names, or `all`) checked against the model set."""
    import difflib

    if isinstance(chosen, str) and chosen == "all":
        return tuple(names)
    chosen = [chosen] if isinstance(chosen, str) else [str(m) for m in chosen]
    unknown = [m for m in chosen if m not in names]
    if unknown:
        hints = {m: difflib.get_close_matches(m, names, n=1) for m in unknown}
        hint = "; ".join(f"'{m}': did you mean '{h[0]}'?" for m, h in hints.items() if h)
        raise SatlabError(f"{what} names model(s) not in the model set: {', '.join(unknown)}"
                          f"{' (' + hint + ')' if hint else ''}; choose from {', '.join(names)}")
    repeated = sorted({m for m in chosen if chosen.count(m) > 1})
    if repeated:
        raise SatlabError(f"{what} lists {', '.join(repeated)} more than once")
    if not chosen:
        raise SatlabError(f"{what} is an empty list; name at least one model")
    return tuple(chosen)


def shard_tile(names: Sequence[str], shard: Any) -> Tile | None:
    """`sat.shard`: None (the whole map), `"i/n"` (every n-th source from the i-th) or a list of sources; each
    against every target."""
    if shard is None or shard == "":
        return None
    if isinstance(shard, str):
        i, n = _split(names, shard, "sat.shard")
        return Tile(tuple(names[i::n]), tuple(names))
    return Tile(named(names, shard, "sat.shard"), tuple(names))


def tile_list(names: Sequence[str], tiles: Any) -> list[Tile]:
    """`sat.tiles`: a grid `"AxB"` (sources in A interleaved groups x targets in B groups; tile k is source group
    k // B x target group k % B) or a list of {sources, targets} (names or `all`). A list must cover every pair
    of the map exactly once: overlaps and gaps raise SatlabError naming them."""
    if isinstance(tiles, str):
        match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", tiles)
        if not match:
            raise SatlabError(f"sat.tiles={tiles}: use a grid 'AxB' (e.g. 4x4) or a list of "
                              "{sources: [...], targets: [...]}")
        a, b = int(match.group(1)), int(match.group(2))
        if not (1 <= a <= len(names) and 1 <= b <= len(names)):
            raise SatlabError(f"sat.tiles={tiles}: each side must be between 1 and the {len(names)} models")
        return [Tile(tuple(names[i::a]), tuple(names[j::b]), i * b + j) for i in range(a) for j in range(b)]
    out = []
    for k, entry in enumerate(tiles):
        if not isinstance(entry, Mapping) or set(entry) != {"sources", "targets"}:
            raise SatlabError(f"sat.tiles[{k}] must be {{sources: [...], targets: [...]}}, got {entry}")
        out.append(Tile(named(names, entry["sources"], f"sat.tiles[{k}].sources"),
                        named(names, entry["targets"], f"sat.tiles[{k}].targets"), k))
    check_cover(names, out)
    return out


def check_cover(names: Sequence[str], tiles: Sequence[Tile]) -> None:
    """Every (source, target) pair of the map in exactly one tile, else SatlabError naming overlaps or gaps."""
    owner: dict[tuple[str, str], int] = {}
    for tile in tiles:
        for pair in sorted(tile.pairs()):
            if pair in owner:
                raise SatlabError(f"sat.tiles overlap: tiles {owner[pair]} and {tile.index} both hold the pair "
                                  f"{pair[0]} -> {pair[1]}; give each pair to one tile")
            owner[pair] = tile.index  # type: ignore[assignment]
    gaps = [(s, t) for s in names for t in names if (s, t) not in owner]
    if gaps:
        shown = ", ".join(f"{s} -> {t}" for s, t in gaps[:6]) + (", ..." if len(gaps) > 6 else "")
        raise SatlabError(f"sat.tiles leave {len(gaps)} pair(s) of the map in no tile ({shown}); cover every "
                          "source x target pair, or use a grid such as sat.tiles=2x2")


def job_tile(names: Sequence[str], shard: Any = None, tiles: Any = None, tile: Any = None,
             assemble: bool = False) -> Tile | None:
    """The tile of this job from `sat.shard`, `sat.tiles` and `sat.tile` (None: the whole map), checked."""
    if shard not in (None, "") and tiles is not None:
        raise SatlabError("sat.shard and sat.tiles both cut the map: keep one (sat.shard=i/n is sat.tiles=nx1)")
    if tiles is None:
        if tile is not None:
            raise SatlabError(f"sat.tile={tile} needs sat.tiles (e.g. sat.tiles=2x2 sat.tile=0)")
        found = shard_tile(names, shard)
        if assemble and found is not None:
            raise SatlabError("sat.assemble=true builds the whole map from the cache; drop sat.shard")
        return found
    grid = tile_list(names, tiles)
    if assemble:
        if tile is not None:
            raise SatlabError("sat.assemble=true builds the whole map from the cache; drop sat.tile")
        return None
    if tile is None or isinstance(tile, bool) or not re.fullmatch(r"\s*\d+\s*", str(tile)) \
            or not 0 <= int(tile) < len(grid):
        raise SatlabError(f"sat.tile={shown(tile)}: say which of the {len(grid)} tiles this job computes, "
                          f"0 <= sat.tile < {len(grid)} (a sweep: sat.tile=range({len(grid)}))")
    return grid[int(tile)]


def missing_tiles(tiles: Sequence[Tile], lacking: Mapping[str, Sequence[str]]) -> list[Tile]:
    """The tiles holding a pair that no row has yet (`lacking[source]`: the targets its row lacks)."""
    return [t for t in tiles if any(target in lacking.get(s, ()) for s in t.sources for target in t.targets)]
