"""The prediction pass: each model runs ONCE over the evaluation images; its log-probabilities are cached.

A LightningModule under `trainer.predict` (like the SAT engine) turns one model's logits into log-softmax
outputs, stored as float16 `[S, C]` per model under `<cache_dir>/probs/<name>-<key>.npz`, where the key hashes the
weights and preprocessing (`PixelModel.fingerprint`, i.e. `ModelSet.key`) and the data's content
(`data_fingerprint`). Every pair and team is then computed from these arrays: N forward passes in all, none on a
rerun. Log-probabilities (not probabilities) are stored so that the mean-of-logits rule stays exact: a model's
log-softmax differs from its logits by a per-sample constant, and small probabilities do not underflow float16.
No Hydra, no wandb here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from satlab.data import data_fingerprint, labels_and_ids
from satlab.sat.cache import from_stored
from satlab.sat.phases import Batches, EngineProgress
from satlab.lightning import build_trainer
from satlab.utils import SatlabError, atomic_path, move_aside, plain, stable_hash, verified

log = logging.getLogger(__name__)

# Part of every cache key: bump it when a change here changes what a cached array holds.
PROBS_VERSION = 1
HALF_MIN = -6.0e4  # log-probabilities are clamped here before float16 (whose lowest finite value is -65504)


class ProbabilityPass(pl.LightningModule):
    """predict_step -> {"pos": dataset positions, "log_probs": float16 log-softmax of one model's logits}."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, _, _, pos = batch
        x = self.trainer.precision_plugin.convert_input(from_stored(x))  # uint8 pixels converted on the device
        log_probs = torch.log_softmax(self.model(x).float(), dim=1).clamp_min(HALF_MIN)
        return {"pos": pos.cpu(), "log_probs": log_probs.half().cpu()}


@dataclass
class Predictions:
    """Cached log-probabilities of N models on S images: log_probs float16 [N, S, C]."""

    names: list[str]
    log_probs: torch.Tensor
    labels: np.ndarray
    sample_ids: np.ndarray
    data_key: str
    computed: list[str] = field(default_factory=list)  # models that ran a forward pass in this call
    reused: list[str] = field(default_factory=list)  # models read from the cache
    timings: dict[str, float] = field(default_factory=dict)


def cache_path(cache_dir: str | Path, name: str, model_key: str, data_key: str, precision: str = "32-true") -> Path:
    """Where one model's log-probabilities on one dataset live: keyed by weights, data content and precision."""
    key = stable_hash({"model": model_key, "data": data_key, "precision": precision, "version": PROBS_VERSION})
    return Path(cache_dir) / "probs" / f"{name}-{key}.npz"


def predict_log_probs(
    models: Any,
    data: Dataset,
    batch_size: int = 256,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    trainer_cfg: Mapping[str, Any] | None = None,
) -> Predictions:
    """Log-probabilities of every model of `models` (a `satlab.models.ModelSet`) on `data` (items: image, label,
    sample_id): one pass per uncached model, with only that model built. Images read from files are decoded once,
    in parallel, and kept in the cache (`satlab.data.pixels`): the passes and later runs read them decoded."""
    names = models.names
    labels, ids = labels_and_ids(data)
    data_key = data_fingerprint(data, cache_dir=cache_dir)
    rows: list[torch.Tensor | None] = []
    settings = dict(plain(trainer_cfg) or {})
    precision = str(settings.get("precision") or "32-true")
    paths = ([cache_path(cache_dir, n, models.key(i), data_key, precision) for i, n in enumerate(names)]
             if cache_dir else [None] * len(names))
    for path in paths:
        rows.append(_load(path, ids))
    result = Predictions(list(names), torch.empty(0), labels, ids, data_key)
    result.reused = [n for n, row in zip(names, rows) if row is not None]
    todo = [i for i, row in enumerate(rows) if row is None]
    if todo:
        progress = EngineProgress() if settings.get("enable_progress_bar", True) else None
        trainer = build_trainer(settings, logger=False, callbacks=[progress] if progress else [])
        if trainer.world_size > 1:
            raise SatlabError("the prediction pass gathers outputs in one process: set trainer.devices=1")
        batches = Batches(data, batch_size)
        loader = DataLoader(batches, batch_size=None, num_workers=0 if batches.pixels is not None else num_workers)
        for count, i in enumerate(todo):
            if progress:
                progress.label = f"predict {count + 1}/{len(todo)}: {names[i]}"
            start = time.perf_counter()
            with models.use(i) as model:
                rows[i] = _gather(trainer.predict(ProbabilityPass(model), loader), len(ids))
            result.timings[f"predict:{names[i]}"] = time.perf_counter() - start
            result.computed.append(names[i])
            if paths[i] is not None:
                save_log_probs(paths[i], rows[i], ids)
    classes = {int(row.shape[1]) for row in rows if row is not None}
    if len(classes) > 1:
        raise SatlabError(f"the models output different numbers of classes {sorted(classes)}; they cannot be combined")
    result.log_probs = torch.stack(rows) if rows else torch.empty(0)  # type: ignore[arg-type]
    return result


def _gather(outputs: list[dict[str, torch.Tensor]], n: int) -> torch.Tensor:
    classes = outputs[0]["log_probs"].shape[1]
    out = torch.empty(n, classes, dtype=torch.float16)
    for part in outputs:
        out[part["pos"]] = part["log_probs"]
    return out


def _load(path: Path | None, ids: np.ndarray) -> torch.Tensor | None:
    if path is None or not verified(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            if not np.array_equal(cached["sample_ids"], ids):
                return None
            return torch.from_numpy(cached["log_probs"].astype(np.float16, copy=False))
    except Exception as err:  # noqa: BLE001 - truncated/garbled files raise BadZipFile, EOFError, zlib.error, ...
        move_aside(path, f"{type(err).__name__}: {err}")
        return None


def save_log_probs(path: Path, log_probs: torch.Tensor, ids: np.ndarray) -> None:
    with atomic_path(path, checksum=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, log_probs=log_probs.numpy(), sample_ids=ids)
