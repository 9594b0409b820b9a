"""The SAT engine: N clean passes, ONE attack per source model, N^2 forward passes on X_AB only.

It runs as a LightningModule under few `trainer.predict` calls (the first with one source, then groups of sources
that take about PASS_SECONDS each) whose step, for each batch, computes every model's clean correctness (first
pass only), then for every source of the pass attacks the images that source classifies correctly and
asks each target about the adversarial images that the target also classifies correctly (the rest of `fooled`
is False by convention). Work streams batch by batch, so memory does not grow with the number of samples.

Each source's row is cached on disk (`satlab.sat.cache`), atomically and under a file lock, keyed by content
and checked against this run's clean correctness, so an interrupted run resumes where it stopped, concurrent
runs share the work, a shard of the sources can be computed on its own (`sources`) and a map assembled from the
cache without computing anything (`assemble_records`). A row that lacks new targets is completed from the
source's stored adversarial images (`store_adversarial`) with only the new pairs' evaluations.
No Hydra, no wandb here.
"""

from __future__ import annotations

import logging
import tempfile
import time
import zlib
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from torch import nn
from torch.utils.data import DataLoader, Dataset

from satlab.attacks import Attack
from satlab.data import data_fingerprint, labels_and_ids
from satlab.sat.cache import Row, adv_path, from_levels, read_adversarial, read_row, row_path, save_row, to_levels
from satlab.sat.records import Records
from satlab.lightning import build_trainer
from satlab.utils import SatlabError, atomic_path, file_lock, plain

log = logging.getLogger(__name__)

# One trainer.predict pass takes as many sources as fill about this many seconds (the first pass takes one, to
# time it): few passes keep Lightning's fixed cost per pass small, and rows still reach the cache (and survive
# an interruption or a preemption) every PASS_SECONDS or so.
PASS_SECONDS = 30.0


def sample_seeds(seed: int, source: str, sample_ids: torch.Tensor) -> torch.Tensor:
    """Per-sample random-start seeds: a function of (run seed, source model, sample id) only."""
    base = zlib.crc32(f"{seed}:{source}".encode())
    return (sample_ids.to(torch.int64).cpu() * 1_000_003 + base) % (2**62)


class Positioned(Dataset):
    """Adds each item's position in the dataset: (image, label, sample_id, position)."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        return (*self.data[i], i)


@dataclass
class Work:
    """One source's work in a pass: the targets to evaluate, and its stored adversarial images (then no attack)
    or an open uint8 array to store the new ones in."""

    targets: list[int]
    stored: np.ndarray | None = None
    store: np.ndarray | None = None


class SATEngine(pl.LightningModule):
    """predict_step: clean correctness (unless known) and, for every source in `plan`, its `fooled` columns.

    With `amp`, the models' forward (and, inside attacks, backward) run under bf16 autocast; the adversarial
    image, its projection and 8-bit rounding stay fp32 (autocast lowers only matmul/conv-like ops). On CUDA the
    models and batches are channels_last. Evaluations run under inference mode.
    """

    def __init__(self, models: Sequence[nn.Module], names: Sequence[str], attack: Attack, seed: int, n_samples: int,
                 amp: bool = False) -> None:
        super().__init__()
        self.models = nn.ModuleList(models).eval()
        self.names = list(names)
        self.attack = attack
        self.seed = seed
        self.amp = amp
        n = len(self.models)
        self.correct = np.zeros((n, n_samples), dtype=bool)  # by dataset position
        self.clean_known = False
        self.plan: dict[int, Work] = {}
        self.spill = ""  # multi-device: the folder where the ranks leave clean correctness and their columns
        self.fooled: dict[int, np.ndarray] = {}  # source -> [N, S]

    def on_predict_start(self) -> None:
        if self.device.type == "cuda":
            self.models.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.trainer.world_size > 1:  # each rank does every world_size-th source of the plan
            rank, world = self.trainer.global_rank, self.trainer.world_size
            self.plan = {src: w for i, (src, w) in enumerate(self.plan.items()) if i % world == rank}
        self.fooled = {src: np.zeros_like(self.correct) for src in self.plan}

    def on_predict_end(self) -> None:
        if self.trainer.world_size > 1:  # the ranks' results meet in the parent process through files
            parts = {str(src): f for src, f in self.fooled.items()}
            if self.trainer.global_rank == 0:
                parts["correct"] = self.correct
            for name, array in parts.items():
                with atomic_path(Path(self.spill) / f"{name}.npy") as tmp:
                    np.save(tmp, array)

    def predict_step(self, batch: Any, batch_idx: int) -> dict:
        x, y, ids, pos = batch
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        p = pos.cpu().numpy()
        cast = torch.autocast(x.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()
        with cast:
            if not self.clean_known:
                with torch.inference_mode():
                    self.correct[:, p] = torch.stack([m(x).argmax(1) == y for m in self.models]).cpu().numpy()
            correct = torch.from_numpy(self.correct[:, p]).to(x.device)
            for src, work in self.plan.items():
                keep = correct[src].nonzero().squeeze(1)
                if not keep.numel():
                    continue
                at = p[keep.cpu().numpy()]
                if work.stored is not None:
                    x_adv = from_levels(work.stored[at], x.device)
                else:
                    x_adv = self.attack(self.models[src], x[keep], y[keep], sample_seeds(self.seed, self.names[src], ids[keep]))
                    if work.store is not None:
                        work.store[at] = to_levels(x_adv).cpu().numpy()
                with torch.inference_mode():
                    for t in work.targets:
                        both = correct[t, keep]
                        if both.any():
                            idx = keep[both]
                            fooled = self.models[t](x_adv[both]).argmax(1) != y[idx]
                            self.fooled[src][t, p[idx.cpu().numpy()]] = fooled.cpu().numpy()
        return {}  # results are written into self.correct / self.fooled by position


class EngineProgress(TQDMProgressBar):
    """A progress bar that says what the pass does ("clean pass + 9 attacks")."""

    def __init__(self) -> None:
        super().__init__()
        self.label = "SAT pass"

    @property
    def predict_description(self) -> str:
        return self.label


@dataclass
class EngineResult:
    records: Records | None  # None for a shard (only its sources' rows were computed, into the cache)
    timings: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)  # sources whose rows came from the cache
    computed: list[str] = field(default_factory=list)  # sources attacked by this run
    completed: list[str] = field(default_factory=list)  # cached rows completed from stored adversarial images
    context: dict[str, Any] = field(default_factory=dict)  # what besides the models determined them (row_context)


def make_trainer(trainer_cfg: Mapping[str, Any] | None) -> tuple[pl.Trainer, EngineProgress | None]:
    """The Lightning Trainer the engine runs under: conf/trainer's (`satlab.lightning.build_trainer`) with gradients
    enabled for the attacks, no user callbacks, and the engine's progress bar. Several devices: forked DDP ranks."""
    settings = dict(plain(trainer_cfg) or {})
    progress = EngineProgress() if settings.get("enable_progress_bar", True) else None
    engine = {"inference_mode": False, "logger": False, "callbacks": [progress] if progress else []}
    trainer = build_trainer(settings, **engine)
    if trainer.world_size > 1 and settings.get("strategy", "auto") in ("auto", "ddp"):
        # ranks are forked from this process (no re-launch of the script), each seeing every image
        settings |= {"strategy": "ddp_fork", "use_distributed_sampler": False}
        trainer = build_trainer(settings, **engine)
    if trainer.world_size > 1 and settings.get("strategy") != "ddp_fork":
        raise SatlabError(f"trainer.strategy={settings.get('strategy')}: the SAT engine splits its sources "
                          "across devices with strategy ddp (forked ranks); drop trainer.strategy")
    return trainer, progress


def row_context(attack: Attack, data: Dataset, seed: int, trainer: pl.Trainer, amp: bool) -> dict[str, Any]:
    """What, besides the source model, determines a row (see `satlab.sat.cache.row_key`)."""
    context = {"attack": attack.describe(), "data": data_fingerprint(data), "seed": seed,
               "precision": str(trainer.precision)}
    return context | ({"autocast": "bf16"} if amp else {})


def records_context(attack: Attack, data: Dataset, seed: int, trainer_cfg: Mapping[str, Any] | None = None,
                    amp: bool | None = None) -> dict[str, Any]:
    """The `row_context` a run with these settings records (what a later task matches an earlier map on)."""
    trainer, _ = make_trainer({**(plain(trainer_cfg) or {}), "enable_progress_bar": False})
    return row_context(attack, data, seed, trainer, use_amp(amp, trainer))


def use_amp(amp: bool | None, trainer: pl.Trainer) -> bool:
    """bf16 autocast: on by default on CUDA only (on CPU it is slower and changes the records)."""
    return trainer.strategy.root_device.type == "cuda" if amp is None else bool(amp)


def compute_records(
    models: Sequence[nn.Module],
    names: Sequence[str],
    model_keys: Sequence[str],
    data: Dataset,
    attack: Attack,
    seed: int = 0,
    batch_size: int = 128,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    trainer_cfg: Mapping[str, Any] | None = None,
    sources: Sequence[str] | None = None,
    store_adversarial: bool = False,
    amp: bool | None = None,
) -> EngineResult:
    """Per-sample transfer records of `models` on `data` (items: image, label, sample_id).

    `model_keys` identify the models by content (`PixelModel.fingerprint()`). With `cache_dir`, each source's
    row is read from / written to `<cache_dir>/records/`; rows are written under a per-file lock, and a source
    whose row another run is computing is done last, so concurrent runs share the work. `sources` (a shard)
    restricts the work to those sources' rows; the result then has no records. `store_adversarial` keeps each
    attacked source's adversarial images beside its row, so that new targets are evaluated without attacking.
    """
    names = list(names)
    labels, ids = labels_and_ids(data)
    n, s = len(models), len(ids)
    trainer, progress = make_trainer(trainer_cfg)
    amp = use_amp(amp, trainer)
    engine = SATEngine(models, names, attack, seed, s, amp)
    loader = DataLoader(Positioned(data), batch_size=batch_size, num_workers=num_workers, shuffle=False)
    todo = list(range(n)) if sources is None else [names.index(m) for m in sources]
    if cache_dir is None and trainer.world_size > 1:
        raise SatlabError(f"trainer.devices: {trainer.world_size} devices share their rows through the records cache: "
                          "set sat.resume=true")
    if cache_dir is None and store_adversarial:
        raise SatlabError("sat.store_adversarial=true keeps the images in the cache: set sat.resume=true")
    keys = list(model_keys)
    context = row_context(attack, data, seed, trainer, amp)
    paths = {src: row_path(cache_dir, names[src], keys[src], context) for src in todo} if cache_dir else {}
    shape = (s, *tuple(data[0][0].shape)) if s else (0,)
    fooled = np.zeros((n, n, s), dtype=bool)
    result = EngineResult(None, context=context)
    start = time.perf_counter()

    def run_pass(plan: dict[int, Work]) -> None:
        if not plan and engine.clean_known:
            return
        engine.plan = plan
        if progress:
            progress.label = ("clean pass + " if not engine.clean_known else "") + f"{len(plan)} source(s)"
        if trainer.world_size == 1:
            trainer.predict(engine, loader, return_predictions=False)
        else:  # forked ranks: this process runs no step; it reads rank 0's clean pass and every rank's columns
            with tempfile.TemporaryDirectory(dir=Path(cache_dir) / "records", prefix=".ranks-") as spill:  # type: ignore[arg-type]
                engine.spill = spill
                trainer.predict(engine, loader, return_predictions=False)
                engine.correct = np.load(Path(spill) / "correct.npy")
                engine.fooled = {src: np.load(Path(spill) / f"{src}.npy") for src in plan}
        engine.clean_known = True

    if cache_dir is None:
        run_pass({src: Work(list(range(n))) for src in todo})
        for src in todo:
            fooled[src] = engine.fooled[src]
        result.computed = [names[src] for src in todo]
    queue, busy, wait, forced, per_source = (list(todo) if cache_dir is not None else []), [], False, set(), None
    while queue or busy:
        if not queue:  # every other source is done: wait for the runs computing these
            queue, busy, wait = busy, [], True
        ranks = trainer.world_size  # a group of k sources per pass keeps k devices busy
        group = ranks if per_source is None else max(ranks, int(PASS_SECONDS / max(per_source, 1e-9)))
        cached, plan, rows = {}, {}, {}
        with ExitStack() as stack:
            while queue and len(plan) < group:
                src = queue.pop(0)
                row = None if src in forced else read_row(paths[src])
                if row is not None and not row.missing(keys):
                    cached[src] = row
                    continue
                held = stack.enter_context(file_lock(paths[src], f"the records of source {names[src]}", wait=wait))
                if not held:  # another run is attacking this source: do the others first
                    busy.append(src)
                    continue
                row = None if src in forced else read_row(paths[src])  # written while we waited?
                if row is not None and not row.missing(keys):
                    cached[src] = row
                    continue
                plan[src], rows[src] = _work(row, paths[src], names[src], keys, shape, store_adversarial, stack), row
            started = time.perf_counter()
            run_pass(plan)
            if plan:
                per_source = (time.perf_counter() - started) / len(plan)
            current = Row(keys, engine.correct, ids, labels)
            completing = {src: rows[src] for src, work in plan.items() if work.stored is not None}
            redo = [src for src, row in {**cached, **completing}.items() if not row.check(current, names[src], paths[src])]
            forced.update(redo)
            queue = redo + queue
            for src, row in cached.items():
                if src not in forced:
                    fooled[src] = row.columns(keys)
                    result.reused.append(names[src])
                    log.info("source %s: reused cached row %s", names[src], paths[src].name)
            for src, work in plan.items():
                if src in completing:
                    if src in forced:
                        continue
                    new = completing[src].merged(current, engine.fooled[src], work.targets)
                    result.completed.append(names[src])
                else:
                    new = Row(keys, engine.correct, ids, labels, engine.fooled[src])
                    result.computed.append(names[src])
                save_row(paths[src], new)
                fooled[src] = new.columns(keys)
    result.timings["engine_passes"] = time.perf_counter() - start
    order = {m: i for i, m in enumerate(names)}
    for part in (result.reused, result.computed, result.completed):
        part.sort(key=order.__getitem__)
    if cache_dir is not None:
        log.info("records: %d source row(s) reused from %s%s, %d completed from stored adversarial images%s, "
                 "%d computed%s", len(result.reused), Path(cache_dir) / "records", _names(result.reused),
                 len(result.completed), _names(result.completed), len(result.computed), _names(result.computed))
    if sources is None:
        result.records = Records(names, ids, labels, engine.correct, fooled)
    return result


def _names(items: list[str]) -> str:
    return f" ({', '.join(items)})" if items else ""


def _work(row: Row | None, path: Path, name: str, keys: list[str], shape: tuple[int, ...], store: bool,
          stack: ExitStack) -> Work:
    """What to do for a source whose cached row is absent or lacks targets (`row`): complete the row from the
    stored adversarial images when there are some; else attack again (storing the images if asked)."""
    stored = read_adversarial(path, shape) if row is not None else None
    if stored is not None:
        missing = row.missing(keys)  # type: ignore[union-attr]
        log.info("source %s: cached row lacks %d target(s); evaluating them on its stored adversarial images",
                 name, len(missing))
        return Work(missing, stored=stored)
    if row is not None:
        log.info("source %s: cached row lacks %d target(s) and its adversarial images were not stored; "
                 "attacking it again (sat.store_adversarial=true keeps them next time)", name, len(row.missing(keys)))
    if not store:
        adv_path(path).unlink(missing_ok=True)  # images of an older row, if any, no longer match it
        return Work(list(range(len(keys))))
    tmp = stack.enter_context(atomic_path(adv_path(path)))  # in place when the pass and the row write succeed
    return Work(list(range(len(keys))), store=np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape))


def assemble_records(
    names: Sequence[str],
    model_keys: Sequence[str],
    data: Dataset,
    attack: Attack,
    cache_dir: str | Path,
    seed: int = 0,
    trainer_cfg: Mapping[str, Any] | None = None,
    amp: bool | None = None,
) -> EngineResult:
    """The records of a map from its cached rows only (written by shard runs); no model is run.

    The clean correctness is the one stored in the rows (they must agree). Missing rows raise SatlabError
    naming the sources, before anything is written.
    """
    names, keys = list(names), list(model_keys)
    labels, ids = labels_and_ids(data)
    trainer, _ = make_trainer({**(plain(trainer_cfg) or {}), "enable_progress_bar": False})
    context = row_context(attack, data, seed, trainer, use_amp(amp, trainer))
    paths = [row_path(cache_dir, m, k, context) for m, k in zip(names, keys)]
    rows = [read_row(p) for p in paths]
    missing = [m for m, r in zip(names, rows) if r is None or r.missing(keys)]
    if missing:
        raise SatlabError(f"cannot assemble the map: no complete cached row for {len(missing)} source(s): "
                          f"{', '.join(missing)} (run the shards that compute them, with the same model set, "
                          "dataset, attack, seed and trainer)")
    correct = Row(keys, rows[0].columns(keys, "correct"), ids, labels)  # type: ignore[union-attr]
    bad = [m for m, r, p in zip(names, rows, paths) if not r.check(correct, m, p)]  # type: ignore[union-attr]
    if bad:
        raise SatlabError(f"cannot assemble the map: the cached rows of {', '.join(bad)} were computed with other "
                          f"clean predictions than the row of {names[0]}; recompute them (delete their rows)")
    fooled = np.stack([r.columns(keys) for r in rows])  # type: ignore[union-attr]
    return EngineResult(Records(names, ids, labels, correct.correct, fooled), reused=names, context=context)
