"""The SAT engine: N clean passes, ONE attack per source, N^2 forward passes on X_AB, with only the models in
use resident.

    phase 1, per source (one model resident): its clean pass and ONE attack of the images it classifies
             correctly -> its clean correctness, its own column (white-box success) and its adversarial images
    phase 2, per block of targets (as many models as `memory_budget` holds): every source's images evaluated
             on X_AB; each source's images are read once per block, and a batch mixes sources

What to attack and evaluate is decided by the scheduler (`satlab.sat.schedule`) from what the source rows of
the records cache hold (`satlab.sat.cache`): a row only grows, so a run on other targets adds columns; a job
computes one tile of the map (`Tile`) and `satlab.sat.assemble` builds the map from the rows. Each phase is one
small LightningModule under `trainer.predict` (several devices: forked DDP ranks, each taking every k-th batch).
Rows and images are written atomically under a per-source lock, so an interrupted run resumes where it stopped
and concurrent runs share the work. A map at a stated precision (`precision`) runs the two phases in rounds over
a seeded image order, on the pairs whose interval is still too wide (`satlab.sat.stopping`; docs/precision.md).
No Hydra, no wandb here.

    >>> result = compute_records(ModelSet.from_models(names, models), data, attack, cache_dir="cache")
    >>> result.records.fooled.shape        # [N, N, S]: source, target, sample
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytorch_lightning as pl
from torch import nn
from torch.utils.data import DataLoader, Dataset

from satlab.attacks import Attack
from satlab.data import data_fingerprint, labels_and_ids
from satlab.data.fingerprint import decode_report
from satlab.data.pixels import default_workers
from satlab.models import ModelSet
from satlab.sat.cache import Row, RowStore, image_dtype
from satlab.sat.phases import (AdversarialBatches, Batches, CleanPass, EngineProgress, Phase, RankShare, SourcePass,
                               TargetPass, engine_time, say_engine_time)
from satlab.sat.precision import image_order, image_rank, rounds
from satlab.sat.records import Records
from satlab.sat.runtime import device_budget, make_trainer, row_context, use_amp
from satlab.sat.schedule import Budget, Plan, Tile, plan_tile, whole_map
from satlab.sat.stopping import adaptive_records, open_cells
from satlab.utils import SatlabError

log = logging.getLogger(__name__)

# Phase 2 batches hold this many times `batch_size` images: an evaluation keeps no activations for gradients, so
# it fits larger batches than the attack, and larger batches run faster. Records do not depend on it (tested).
EVAL_BATCHES = 4


# ---------------------------------------------------------------------------------------------- a job


@dataclass
class EngineResult:
    records: Records | None  # None for a tile (its rows are in the cache)
    timings: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)  # sources whose rows held every target already
    computed: list[str] = field(default_factory=list)  # sources attacked by this run (phase 1)
    completed: list[str] = field(default_factory=list)  # sources given new columns without an attack
    context: dict[str, Any] = field(default_factory=dict)  # what besides the models determined them (row_context)
    blocks: int = 0  # phase-2 blocks of targets run
    disk_bytes: int = 0  # the cache files (rows + images) of this map's sources
    seconds: dict[str, float] = field(default_factory=dict)  # "attack <source>", "evaluate <t1,t2,...>": wall time
    data_path: dict[str, dict[str, Any]] = field(default_factory=dict)  # engine time by phase (`engine_time`)
    work: dict[str, int] = field(default_factory=dict)  # images x models through each kind of pass (`Job.work`)


class Job:
    """One engine run over a tile: the phases, the trainer that runs them and the store they meet in."""

    def __init__(self, models: ModelSet, data: Dataset, attack: Attack, store: RowStore, trainer: pl.Trainer,
                 progress: EngineProgress | None, seed: int, batch_size: int, num_workers: int, amp: bool,
                 cache_dir: str | Path | None) -> None:
        self.models, self.data, self.attack, self.store, self.trainer = models, data, attack, store, trainer
        self.progress, self.seed, self.amp, self.cache_dir = progress, seed, amp, cache_dir
        self.batch_size, self.num_workers = batch_size, num_workers
        self.index = {n: i for i, n in enumerate(models.names)}
        self.keys = {n: models.key(i) for i, n in enumerate(models.names)}
        self.labels, self.ids = labels_and_ids(data)
        self.seconds: dict[str, float] = {}  # per phase-1 source and phase-2 block, models' loading included
        self.own: dict[str, np.ndarray] = {}  # clean correctness as each model's own row holds it (read once)
        self.clock: dict[str, dict[str, float]] = {}  # per kind of pass: wait_s, transfer_s, compute_s (`Phase`)
        self.order = image_order(seed, len(self.ids))  # the images' order (a map at a stated precision takes rounds)
        self.rank = image_rank(self.order)
        self.work = {"clean": 0, "attacked": 0, "evaluated": 0}  # images x models through each kind of pass

    def loader(self, dataset: Dataset) -> DataLoader:
        """On CUDA, `num_workers` worker processes prepare the batches (slices of the decoded pixels, reads of stored
        adversarial images, or images decoded on access) and prefetch 4 each, into pinned memory (an asynchronous
        copy), while the device computes. On CPU the models compute on the cores the workers would take: the main
        process serves slices and stored images, and only images decoded on access use workers."""
        cuda = self.trainer.strategy.root_device.type == "cuda"
        decoded = isinstance(dataset, Batches) and dataset.pixels is not None
        at_hand = decoded or isinstance(dataset, AdversarialBatches)
        workers = 0 if at_hand and not cuda else self.num_workers
        extra = {"prefetch_factor": 4} if workers and cuda else {}
        return DataLoader(RankShare(dataset), batch_size=None, num_workers=workers, pin_memory=cuda, **extra)

    def predict(self, module: Phase, dataset: Dataset, label: str) -> dict[str, np.ndarray]:
        """Run `module` over `dataset` (one `trainer.predict`); its outputs, ORed over the devices' ranks. Its time
        by what it waited for is added to `clock` under the pass's kind (the label's first word)."""
        if self.progress:
            self.progress.label = label
        kind = label.split()[0]
        try:
            if self.trainer.world_size == 1:
                self.trainer.predict(module, self.loader(dataset), return_predictions=False)
                return module.outputs()
            records = Path(self.cache_dir or ".") / "records"  # several devices need the cache (checked)
            with tempfile.TemporaryDirectory(dir=records, prefix=".ranks-") as spill:
                module.spill = spill
                self.trainer.predict(module, self.loader(dataset), return_predictions=False)
                parts = [dict(np.load(f)) for f in sorted(Path(spill).glob("rank*.npz"))]
            return {k: np.logical_or.reduce([p[k] for p in parts]) for k in parts[0]}
        finally:
            module.models = nn.ModuleList()  # the trainer keeps the module: it must not keep the models too
            total = self.clock.setdefault(kind, {"wait_s": 0.0, "transfer_s": 0.0, "compute_s": 0.0})
            for what, seconds in module.clock.items():
                total[what] += seconds

    # ---- phase 1

    def attack_sources(self, sources: list[str], upto: int) -> list[str]:
        """Attack each source (its images up to `upto` in the order) not done by another run meanwhile (a source
        another run holds is done last, after waiting for it); returns the sources attacked here."""
        attacked: list[str] = []
        queue, busy, wait = list(sources), [], False
        while queue or busy:
            if not queue:  # every other source is done: wait for the runs attacking these
                queue, busy, wait = busy, [], True
            name = queue.pop(0)
            with self.store.lock(name, wait=wait) as held:
                if not held:
                    busy.append(name)
                    continue
                state = self.store.state(name)
                if state.exists and state.images and state.reach(self.keys[name]) >= upto:  # another run did it
                    continue
                self.attack_source(name, upto)
                attacked.append(name)
        return attacked

    def attack_source(self, name: str, upto: int) -> None:
        """Phase 1 for one source (call under its lock): its clean pass and the attack of the images it classifies
        correctly among the first `upto` of the order. A source with a row and stored images attacks only the
        images past those (its row's own column says how far they go); without a row, the clean pass covers every
        image."""
        key, start, total = self.keys[name], time.perf_counter(), len(self.ids)
        row = self.store.read(name)
        before = None if row is None else self.store.images(name)
        begin = row.reach(key) if row is not None and before is not None else 0
        ran = np.ones(total, dtype=bool)  # the clean pass: every image for a new row, else the images of the window
        if row is not None:
            ran = (self.rank >= begin) & (self.rank < upto)
            if begin:  # going further: only the images it classifies correctly (the first pass checked the others)
                ran &= row.own(key)  # type: ignore[arg-type]
        only = None if row is not None or upto >= total else self.rank < upto
        with self.store.new_images(name, before if begin else None) as images, \
                self.models.use(self.index[name]) as model:
            step = SourcePass(model, name, self.attack, self.seed, images, self.amp, only)
            del model  # the step holds the model until `predict` lets it go, so `use` can free it at once
            positions = None if ran.all() else np.flatnonzero(ran)
            if ran.any():
                out = self.predict(step, Batches(self.data, self.batch_size, positions), f"attack {name}")
            else:  # nothing to attack in the window
                out, step.models = step.outputs(), nn.ModuleList()
        correct = out["correct"]
        if row is not None:
            stored = row.own(key)
            if not np.array_equal(stored[ran], correct[ran]):  # type: ignore[index]
                log.warning("source %s: its stored row was computed when it classified %d clean image(s) differently "
                            "(another device or library version?); attacking it again from the first image", name,
                            int((stored[ran] != correct[ran]).sum()))  # type: ignore[index]
                self.store.drop(name)
                return self.attack_source(name, upto)
            correct = stored  # every image: the clean pass here covered only the images attacked now
        self.work["clean"] += int(ran.sum())
        self.work["attacked"] += int((correct & (self.rank >= begin) & (self.rank < upto)).sum())
        seen = np.array([min(upto, total)])
        self.store.write(name, Row([key], correct[None], self.ids, self.labels, out["fooled"][None], seen),
                         own_key=key, starts=np.array([begin]))
        self.own[name] = correct
        self.seconds[f"attack {name}"] = self.seconds.get(f"attack {name}", 0.0) + time.perf_counter() - start

    # ---- phase 2

    def evaluate_block(self, block: list[str], plan: Plan, upto: int) -> list[str]:
        """Evaluate every source's images on the targets of `block` that its row lacks (`plan.columns`), on the
        images of the order from where its column stops (`plan.starts`, else the first) to `upto`; returns the
        sources."""
        start, columns, total = time.perf_counter(), plan.columns, len(self.ids)
        sources = [s for s, targets in columns.items() if set(targets) & set(block)]
        need = np.array([[t in columns[s] for t in block] for s in sources])
        begin = np.array([[plan.starts.get((s, t), 0) for t in block] for s in sources], dtype=np.int64)
        stop = np.full(need.shape, min(upto, total), dtype=np.int64)
        window = (begin, stop, self.rank) if begin.any() or upto < total else None
        source_correct = np.stack([self.own_correct(s) for s in sources])
        with self.models.use_block([self.index[t] for t in block]) as nets:
            correct = self.target_correct(block, nets)
            if window is None:
                wanted = source_correct & (need.astype(np.uint8) @ correct.astype(np.uint8) > 0)  # [sources, S]
            else:
                wanted = np.zeros_like(source_correct)
                for j in range(len(block)):
                    inside = (begin[:, j, None] <= self.rank) & (self.rank < stop[:, j, None]) & need[:, j, None]
                    wanted |= source_correct & correct[j] & inside
            self.work["evaluated"] += self.evaluations(source_correct, correct, need, window)
            items = np.argwhere(wanted)  # (source, position), by source then position
            images = [self.store.images(s) for s in sources]
            step = TargetPass(nets, correct, need, self.amp, window)
            del nets  # the step holds the models until `predict` lets them go, so `use` can free them at once
            if len(items):
                batches = AdversarialBatches(images, self.labels, items, EVAL_BATCHES * self.batch_size)  # type: ignore[arg-type]
                out = self.predict(step, batches, f"evaluate {len(block)} target(s) on {len(sources)} source(s)")
            else:  # no X_AB at all: nothing is fooled
                out, step.models = step.outputs(), nn.ModuleList()
        for a, source in enumerate(sources):
            cols = np.flatnonzero(need[a])
            row = Row([self.keys[block[j]] for j in cols], correct[cols], self.ids, self.labels,
                      out["fooled"][a, cols], stop[a, cols])
            with self.store.lock(source):
                self.store.write(source, row, starts=begin[a, cols])
        label = f"evaluate {','.join(block)}"
        self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start
        return sources

    def evaluations(self, source_correct: np.ndarray, correct: np.ndarray, need: np.ndarray,
                    window: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> int:
        """Forward passes (images x targets) a block's evaluation makes: each pair's X_AB within its window."""
        count = 0
        for j in range(correct.shape[0]):
            both = source_correct & correct[j] & need[:, j, None]
            if window is not None:
                begin, stop, rank = window
                both &= (begin[:, j, None] <= rank) & (rank < stop[:, j, None])
            count += int(both.sum())
        return count

    def own_correct(self, name: str) -> np.ndarray | None:
        """A model's clean correctness as its own row holds it (read once per job); None without a row."""
        if name not in self.own:
            row = self.store.read(name)
            correct = None if row is None else row.own(self.keys[name])
            if correct is None:
                return None
            self.own[name] = correct
        return self.own[name]

    def target_correct(self, block: list[str], nets: list[nn.Module]) -> np.ndarray:
        """The block's clean correctness [T,S]: from the targets' own rows, else from a clean pass now."""
        known = [self.own_correct(t) for t in block]
        todo = [j for j, c in enumerate(known) if c is None]
        if todo:
            out = self.predict(CleanPass([nets[j] for j in todo], len(self.ids), self.amp),
                               Batches(self.data, self.batch_size), f"clean pass of {len(todo)} target(s)")
            for j, correct in zip(todo, out["correct"]):
                known[j] = correct
            self.work["clean"] += len(todo) * len(self.ids)
        return np.stack(known)  # type: ignore[arg-type]

    # ---- rows that disagree

    def disagreeing(self, tile: Tile) -> dict[str, set[str]]:
        """Per source, the targets whose column was computed with other clean predictions than the target's own
        row holds (e.g. it ran on another device): such columns are dropped and computed again."""
        rows = {n: self.store.read(n) for n in {*tile.sources, *tile.targets}}
        own = {t: c for t in tile.targets if (c := self.own_correct(t)) is not None}
        bad: dict[str, set[str]] = {}
        for s in tile.sources:
            for t, correct in own.items():
                column = rows[s].own(self.keys[t]) if rows[s] is not None else None  # type: ignore[union-attr]
                if s != t and column is not None and not np.array_equal(column, correct):
                    bad.setdefault(s, set()).add(t)
        for s, targets in bad.items():
            log.warning("source %s: its cached columns for %s were computed when those models classified clean "
                        "images differently (another device or library version?); computing them again", s,
                        ", ".join(sorted(targets)))
            with self.store.lock(s):
                row: Row = self.store.read(s)  # type: ignore[assignment]
                self.store.write(s, row.without({self.keys[t] for t in targets}), replace=True)
        return bad

    def records(self, names: list[str], adaptive: bool = False) -> Records:
        """The map's records from the rows. A map at a stated precision (`adaptive`, or rows whose pairs did not
        use every image) has `Records.images_used`: a pair uses the images both its directions cover."""
        rows: list[Row] = [self.store.read(n) for n in names]  # type: ignore[misc]
        keys = [self.keys[n] for n in names]
        correct = np.stack([r.own(k) for r, k in zip(rows, keys)])  # type: ignore[misc]
        fooled = np.stack([r.columns(keys) for r in rows])
        seen = np.stack([r.columns(keys, "seen") for r in rows])
        records = Records(names, self.ids, self.labels, correct, fooled)
        return adaptive_records(records, seen, self.order) if adaptive or (seen < len(self.ids)).any() else records


def compute_records(
    models: ModelSet,
    data: Dataset,
    attack: Attack,
    seed: int = 0,
    batch_size: int = 128,
    num_workers: int | None = None,
    cache_dir: str | Path | None = None,
    trainer_cfg: Mapping[str, Any] | None = None,
    tile: Tile | None = None,
    store_adversarial: bool = True,
    memory_budget: Budget | None = None,
    amp: bool | None = None,
    precision: float | None = None,
    first_round: int = 250,
) -> EngineResult:
    """Per-sample transfer records of the model set on `data` (items: image, label, sample_id).

    Args:
        models: the model set; a model is built only while a phase uses it.
        num_workers: threads of the one decode pass of images read from files (`satlab.data.pixels`) and loader
            workers where they help (`Job.loader`); None: the cores available.
        cache_dir: the records cache (`<cache_dir>/records/`): rows and images are read from and written to it, and
            the decoded evaluation images (`<cache_dir>/pixels/`). None: everything stays in this run (images in a
            temporary folder, decoded pixels in memory).
        tile: the pairs to compute (`satlab.sat.schedule`); None: the whole map. A tile's result has no
            records (they are in the cache; `satlab.sat.assemble.assemble_records` builds the map).
        store_adversarial: keep each source's images in the cache, so that new targets need no attack.
        memory_budget: how many models phase 2 keeps resident (`Budget`); None: what the device holds.
        amp: bf16 autocast (None: on CUDA only).
        precision: a map at a stated precision (`sat.precision`): the 95 % half-width h, in ln units, at which a
            pair stops taking images (None: every pair on every image). Images are taken in the seeded order
            `satlab.sat.precision.image_order`, in rounds of `first_round` images, doubling, up to all
            (`satlab.sat.precision.rounds`); after each round a pair whose interval (`sat_interval`) is no wider
            than +-h stops, and a source stops attacking when all its pairs have. A pair's result is a prefix of
            the fixed-count computation on the same order, so the cache, tiles and a later smaller h only add images.
    """
    names = models.names
    trainer, progress = make_trainer(trainer_cfg)
    if cache_dir is None and trainer.world_size > 1:
        raise SatlabError(f"trainer.devices: {trainer.world_size} devices meet in the records cache: "
                          "set sat.resume=true")
    amp = use_amp(amp, trainer)
    num_workers = default_workers() if num_workers is None else int(num_workers)
    decoded_before = decode_report(data) is not None  # by the task, before any model work (`decode_eval`)
    start = time.perf_counter()
    data_fingerprint(data, num_workers, cache_dir)  # the one decode pass, unless done before
    context = row_context(attack, data, seed, trainer, amp)
    labels, ids = labels_and_ids(data)
    shape = (len(ids), *tuple(data[0][0].shape)) if len(ids) else (0,)
    store = RowStore(cache_dir, names, models.keys(), context, ids, labels, shape,
                     image_dtype(bool(getattr(attack, "quantize", False))), store_adversarial)
    job = Job(models, data, attack, store, trainer, progress, seed, batch_size, num_workers, amp, cache_dir)
    work = tile or whole_map(names)
    budget = memory_budget or device_budget(trainer)
    sizes = {n: models.nbytes(i) for i, n in enumerate(names)} if budget.nbytes is not None else {}
    result = EngineResult(None, context=context)
    try:
        for upto in [len(ids)] if precision is None else rounds(len(ids), first_round):
            cells = None
            if precision is not None:
                rows = {n: store.read(n) for n in {*work.sources, *work.targets}}
                cells = open_cells(work, rows, job.keys, job.rank, upto, precision)
                pairs = sum(t != s for s, targets in cells.items() for t in targets) // 2
                log.info("round of %d image(s): %d pair(s) wider than +-%g take more images", upto, pairs, precision)
                if not cells:
                    continue
            complete(job, work, cells, upto, sizes, budget, result, first=precision is None)
        if tile is None:
            result.records = job.records(names, adaptive=precision is not None)
    finally:
        store.close()
    result.timings["engine_passes"] = time.perf_counter() - start
    result.seconds, result.work = job.seconds, dict(job.work)
    result.data_path = engine_time(decode_report(data), job.clock, len(job.ids), result.timings["engine_passes"],
                                   decoded_before)
    result.disk_bytes = store.disk_bytes(list(work.sources)) if store.keep else 0
    order = {m: i for i, m in enumerate(names)}
    result.computed = sorted(set(result.computed), key=order.__getitem__)
    result.completed = sorted(set(result.completed) - set(result.computed), key=order.__getitem__)
    result.reused = [s for s in work.sources if s not in result.computed and s not in result.completed]
    for source in result.reused:
        log.info("source %s: reused cached row%s", source, f" {store.paths[source].name}" if store.paths else "")
    if cache_dir is not None:
        log.info("records: %d source row(s) reused from %s%s, %d completed from stored adversarial images%s, "
                 "%d computed%s; %d block(s) of targets", len(result.reused), Path(cache_dir) / "records",
                 _names(result.reused), len(result.completed), _names(result.completed), len(result.computed),
                 _names(result.computed), result.blocks)
    say_engine_time(result.data_path, num_workers)
    return result


def complete(job: Job, work: Tile, cells: dict[str, list[str]] | None, upto: int, sizes: dict[str, int | None],
             budget: Budget, result: EngineResult, first: bool) -> None:
    """Bring the tile's rows (`cells`: per source, the targets of this round; None: the tile's) to the first
    `upto` images of the order: attack, evaluate, check; again only for what the check dropped. `first`: the
    console says what the cache lacks and the disk's room is checked before any attack."""
    store = job.store
    check = work if cells is None else Tile(tuple(cells), tuple(cells))
    for round_ in range(6):
        sources = work.sources if cells is None else cells
        plan = plan_tile(work, job.keys, {n: store.state(n) for n in sources}, sizes, budget, upto, cells)
        if first and round_ == 0:
            say(plan, store.keep)
        if round_ == 0:
            store.check_room(plan.attack)
        if plan.attack:
            result.computed += job.attack_sources(plan.attack, upto)
            continue
        if plan.columns:
            for block in plan.blocks:
                result.completed += job.evaluate_block(block, plan, upto)
                result.blocks += 1
            continue
        if not job.disagreeing(check):
            return
    raise SatlabError("the records could not be completed: rows kept disagreeing with each other (see the warnings "
                      f"above); delete {Path(job.cache_dir or '.') / 'records'} and run again")


def say(plan: Plan, images_kept: bool) -> None:
    """The console line for each cached row that lacks targets, naming them, and what is done about it."""
    for source, targets in plan.lacking.items():
        shown = ", ".join(targets[:8]) + (f" and {len(targets) - 8} more" if len(targets) > 8 else "")
        if source in plan.attack:
            why = ("its adversarial images were not stored; attacking it again"
                   + ("" if images_kept else " (sat.store_adversarial=true keeps them next time)"))
        else:
            why = "evaluating them on its stored adversarial images"
        log.info("source %s: cached row lacks %d target(s) (%s); %s", source, len(targets), shown, why)


def _names(items: list[str]) -> str:
    return f" ({', '.join(items)})" if items else ""
