"""The SAT engine: N clean passes, ONE attack per source model, N^2 forward passes on X_AB only.

It runs as a LightningModule under `trainer.predict` (which never pads or repeats samples): one pass computes
every model's clean correctness, then one pass per source model attacks the images that source classifies
correctly and asks every target model about the adversarial images that the target also classifies correctly
(the rest of `fooled` is False by convention). Work streams batch by batch, so memory does not grow with the
number of samples. Each source's row is cached on disk, atomically, under a key that hashes what determines it,
so an interrupted run resumes where it stopped. No Hydra, no wandb here.
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
from satlab.utils import SatlabError, atomic_path, stable_hash

log = logging.getLogger(__name__)

# Part of every cache key: bump it when a change to attacks or the engine changes what a record holds.
RECORDS_VERSION = 3


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
    """Per-sample transfer records of `models` on `data` (items: image, label, sample_id)."""
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
    data_key = data_fingerprint(data)
    reused = []
    for src in range(n):
        key = stable_hash({"model": model_keys[src], "attack": attack.describe(), "data": data_key, "seed": seed,
                           "version": RECORDS_VERSION})
        path = Path(cache_dir) / "records" / f"{names[src]}-{key}.npz" if cache_dir else None
        row = _load_row(path, model_keys)
        if row is not None:
            fooled[src] = row
            reused.append(names[src])
            continue
        if progress:
            progress.label = f"attack {src + 1}/{n}: {names[src]}"
        start = time.perf_counter()
        engine.source = src
        fooled[src] = _gather(trainer.predict(engine, loader), "fooled", n, s)
        timings[f"source:{names[src]}"] = time.perf_counter() - start
        if path is not None:
            _save_row(path, fooled[src], model_keys)
    engine.source = None
    return EngineResult(Records(list(names), ids, labels, correct, fooled), timings, reused)


def _load_row(path: Path | None, target_keys: Sequence[str]) -> np.ndarray | None:
    """A cached source row, re-ordered to `target_keys`, or None when absent or not covering every target."""
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            where = {str(k): i for i, k in enumerate(cached["target_keys"])}
            if not all(k in where for k in target_keys):
                return None
            return cached["fooled"][[where[k] for k in target_keys]]
    except (OSError, KeyError, ValueError):
        log.warning("ignoring unreadable cache file %s", path)
        return None


def _save_row(path: Path, row: np.ndarray, target_keys: Sequence[str]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, fooled=row, target_keys=np.asarray(list(target_keys)))
