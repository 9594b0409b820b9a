"""The SAT engine: N clean passes, ONE attack per source model, N^2 forward passes on X_AB only.

It runs as a LightningModule under `trainer.predict` (which never pads or repeats samples): one pass computes
every model's clean correctness, then one pass per source model attacks the images that source classifies
correctly and asks every target model about the adversarial images that the target also classifies correctly
(the rest of `fooled` is False by convention). Work streams batch by batch, so memory does not grow with the
number of samples. Each source's row is cached on disk, atomically and under a file lock, keyed by content
(weights, data, attack, seed; `row_key`) and checked against this run's clean correctness when read, so an
interrupted run resumes where it stopped and concurrent runs share the work. No Hydra, no wandb here.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from torch import nn
from torch.utils.data import DataLoader, Dataset

from satlab.attacks import Attack
from satlab.data import data_fingerprint, labels_and_ids
from satlab.sat.records import Records
from satlab.utils import SatlabError, atomic_path, file_lock, move_aside, stable_hash

log = logging.getLogger(__name__)

# Part of every cache key: bump it when a change to attacks or the engine changes what a record holds.
RECORDS_VERSION = 4


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


class SATEngine(pl.LightningModule):
    """predict_step computes clean correctness (`source is None`) or one source's `fooled` rows."""

    def __init__(self, models: Sequence[nn.Module], names: Sequence[str], attack: Attack, seed: int = 0) -> None:
        super().__init__()
        self.models = nn.ModuleList(models).eval()
        self.names = list(names)
        self.attack = attack
        self.seed = seed
        self.source: int | None = None
        self.correct: torch.Tensor | None = None  # [N, S] bool, by dataset position

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y, ids, pos = batch
        if self.source is None:
            correct = torch.stack([m(x).argmax(1) == y for m in self.models])
            return {"pos": pos.cpu(), "correct": correct.cpu()}
        assert self.correct is not None, "run the clean pass first"
        correct = self.correct[:, pos.cpu()].to(x.device)
        fooled = torch.zeros_like(correct)
        keep = correct[self.source].nonzero().squeeze(1)
        if keep.numel():
            seeds = sample_seeds(self.seed, self.names[self.source], ids[keep])
            x_adv = self.attack(self.models[self.source], x[keep], y[keep], seeds)
            for t, model in enumerate(self.models):
                both = correct[t, keep]
                if both.any():
                    idx = keep[both]
                    fooled[t, idx] = model(x_adv[both]).argmax(1) != y[idx]
        return {"pos": pos.cpu(), "fooled": fooled.cpu()}


class EngineProgress(TQDMProgressBar):
    """A progress bar that says which pass is running ("clean pass", "attack 3/9: resnet18")."""

    def __init__(self) -> None:
        super().__init__()
        self.label = "clean pass"

    @property
    def predict_description(self) -> str:
        return self.label


@dataclass
class EngineResult:
    records: Records
    timings: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)  # sources whose rows came from the cache
    computed: list[str] = field(default_factory=list)  # sources attacked by this run


def _gather(outputs: list[dict[str, torch.Tensor]], key: str, n: int, s: int) -> np.ndarray:
    out = np.zeros((n, s), dtype=bool)
    for part in outputs:
        out[:, part["pos"].numpy()] = part[key].numpy()
    return out


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
    trainer_kwargs: dict[str, Any] | None = None,
) -> EngineResult:
    """Per-sample transfer records of `models` on `data` (items: image, label, sample_id).

    `model_keys` identify the models by content (`PixelModel.fingerprint()`). With `cache_dir`, each source's
    row is read from / written to `<cache_dir>/records/` (see `row_key`); rows are written under a per-file lock,
    and a source whose row another run is computing is done last, so concurrent runs share the work.
    """
    labels, ids = labels_and_ids(data)
    n, s = len(models), len(ids)
    engine = SATEngine(models, names, attack, seed)
    trainer_kwargs = dict(trainer_kwargs or {})
    progress = EngineProgress() if trainer_kwargs.get("enable_progress_bar", True) else None
    trainer = pl.Trainer(
        inference_mode=False,  # attacks need gradients with respect to the input
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[progress] if progress else None,
        **trainer_kwargs,
    )
    if trainer.world_size > 1:
        raise SatlabError(
            "the SAT engine gathers its records in one process: set trainer.devices=1 "
            "(multi-device runs are not supported yet)"
        )
    loader = DataLoader(Positioned(data), batch_size=batch_size, num_workers=num_workers, shuffle=False)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    correct = _gather(trainer.predict(engine, loader), "correct", n, s)
    timings["clean_pass"] = time.perf_counter() - start
    engine.correct = torch.from_numpy(correct)
    fooled = np.zeros((n, n, s), dtype=bool)
    context = {"attack": attack.describe(), "data": data_fingerprint(data), "seed": seed,
               "precision": str(trainer.precision)}
    current = RowContext(list(model_keys), correct, ids, labels)
    reused: list[str] = []

    def attack_source(src: int) -> None:
        if progress:
            progress.label = f"attack {src + 1}/{n}: {names[src]}"
        start = time.perf_counter()
        engine.source = src
        fooled[src] = _gather(trainer.predict(engine, loader), "fooled", n, s)
        timings[f"source:{names[src]}"] = time.perf_counter() - start
        log.info("source %s: attacked (%d images, %.1f s)", names[src], int(correct[src].sum()),
                 timings[f"source:{names[src]}"])

    pending, last_round = list(range(n)), cache_dir is None
    while pending:
        busy = []
        for src in pending:
            if cache_dir is None:
                attack_source(src)
                continue
            path = Path(cache_dir) / "records" / f"{names[src]}-{row_key(model_keys[src], names[src], context)}.npz"
            row = _load_row(path, names[src], current)
            if row is None:
                with file_lock(path, f"the records of source {names[src]}", wait=last_round) as held:
                    if not held:  # another run is attacking this source: do the others first
                        busy.append(src)
                        continue
                    row = _load_row(path, names[src], current)  # written while we waited?
                    if row is None:
                        attack_source(src)
                        _save_row(path, fooled[src], current)
                        continue
            fooled[src] = row
            reused.append(names[src])
            log.info("source %s: reused cached row %s", names[src], path.name)
        pending, last_round = busy, True
    engine.source = None
    reused.sort(key=list(names).index)
    computed = [m for m in names if m not in reused]
    if cache_dir is not None:
        log.info("records: %d source row(s) reused from %s%s, %d computed%s", len(reused), Path(cache_dir) / "records",
                 f" ({', '.join(reused)})" if reused else "", len(computed),
                 f" ({', '.join(computed)})" if computed else "")
    return EngineResult(Records(list(names), ids, labels, correct, fooled), timings, reused, computed)


def row_key(model_key: str, name: str, context: dict[str, Any]) -> str:
    """Cache key of one source's row: what determines it, by content.

    The source's weights + preprocessing (`model_key`), its name (it seeds the random start, `sample_seeds`),
    and `context`: the attack as it runs (`attack.describe()`), the data's content fingerprint, the run seed,
    the numeric precision, and RECORDS_VERSION. The targets are checked when the row is read (`_load_row`).
    """
    return stable_hash({"model": model_key, "name": name, **context, "version": RECORDS_VERSION})


@dataclass
class RowContext:
    """What a cached row must agree with: target keys, their clean correctness [T,S], sample ids, labels."""

    target_keys: list[str]
    correct: np.ndarray
    ids: np.ndarray
    labels: np.ndarray


def _load_row(path: Path, source: str, current: RowContext) -> np.ndarray | None:
    """A cached row re-ordered to the current targets; None when absent, damaged, partial or inconsistent.

    A damaged file is moved aside (warning). A row whose stored sample ids, labels or clean correctness of
    some target differ from this run's is rejected with a warning (e.g. another device changed predictions).
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            stored = RowContext([str(k) for k in cached["target_keys"]], cached["correct"], cached["sample_ids"],
                                cached["labels"])
            row = cached["fooled"]
    except Exception as err:  # noqa: BLE001 - truncated/garbled files raise BadZipFile, EOFError, zlib.error, ...
        move_aside(path, f"{type(err).__name__}: {err}")
        return None
    where = {k: i for i, k in enumerate(stored.target_keys)}
    if not all(k in where for k in current.target_keys):
        log.info("source %s: cached row %s does not cover every current target; recomputing", source, path.name)
        return None
    order = [where[k] for k in current.target_keys]
    if not (np.array_equal(stored.ids, current.ids) and np.array_equal(stored.labels, current.labels)):
        log.warning("source %s: cached row %s was computed on other sample ids/labels; recomputing", source, path.name)
        return None
    differ = (stored.correct[order] != current.correct).sum(axis=1)
    if differ.any():
        log.warning("source %s: cached row %s was computed when %d target(s) classified %d clean image(s) "
                    "differently (e.g. another device or library version); recomputing", source, path.name,
                    int((differ > 0).sum()), int(differ.sum()))
        return None
    return row[order]


def _save_row(path: Path, row: np.ndarray, current: RowContext) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, fooled=row, target_keys=np.asarray(current.target_keys), correct=current.correct,
                                sample_ids=current.ids, labels=current.labels)
