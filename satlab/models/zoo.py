"""The digits zoo: small timm architectures that satlab trains on the spot and caches.

A zoo model is a spec with `train_seed`. Its weights are cached as safetensors under
`<cache_dir>/zoo/<name>-<key>.safetensors`, where the key hashes everything that determines them (`zoo_key`:
architecture, arguments, init and train seeds, the training data's content, recipe, resolution, classes).
Later runs load them instead of training; loaded models are then identified by their weight fingerprint.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

from satlab.data import data_fingerprint
from satlab.models.factory import create_timm, data_overrides
from satlab.models.specs import ModelSpec
from satlab.models.wrapper import PixelModel
from satlab.utils import SatlabError, file_lock, read_cached_weights, stable_hash, write_cached_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """How a zoo model is trained (AdamW, one-cycle schedule, random shifts)."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    max_shift: int = 2  # random translation in pixels (augmentation)


class Classifier(pl.LightningModule):
    """Trains a PixelModel with cross-entropy; reports test accuracy."""

    def __init__(self, model: PixelModel, cfg: TrainConfig, num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def _shift(self, x: torch.Tensor) -> torch.Tensor:
        s = self.cfg.max_shift
        if s <= 0:
            return x
        dx, dy = torch.randint(-s, s + 1, (2,)).tolist()
        padded = F.pad(x, (s, s, s, s))
        h, w = x.shape[-2:]
        return padded[..., s + dy : s + dy + h, s + dx : s + dx + w]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        loss = F.cross_entropy(self.model(self._shift(x)), y, label_smoothing=self.cfg.label_smoothing)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y, _ = batch
        self.accuracy.update(self.model(x).argmax(1), y)
        self.log("test_acc", self.accuracy, prog_bar=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.cfg.lr, total_steps=int(self.trainer.estimated_stepping_batches), pct_start=0.2
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# Part of every zoo key: bump it when a change to training changes the weights it produces.
ZOO_VERSION = 2


def zoo_key(spec: ModelSpec, cfg: TrainConfig, train_fingerprint: str, resolution: int, num_classes: int,
            precision: str | None = None) -> str:
    """Hash of everything that determines a zoo model's weights.

    The architecture and its arguments, the init seed (`create_timm` seeds with crc32 of "<train_seed>:<name>",
    so the name counts), the training seed, the training data's content (`data_fingerprint` of the train
    split), the recipe, the wrapper's input size, resolution, class count, numeric precision and ZOO_VERSION.
    """
    return stable_hash(
        {
            "timm_name": spec.timm_name,
            "model_args": dict(spec.model_args),
            "input_size": spec.input_size,
            "init_seed": zlib.crc32(f"{int(spec.train_seed or 0)}:{spec.name}".encode()),
            "train_seed": spec.train_seed,
            "train": cfg.__dict__,
            "train_data": train_fingerprint,
            "resolution": resolution,
            "num_classes": num_classes,
            "precision": precision,
            "version": ZOO_VERSION,
        }
    )


def build_zoo_model(spec: ModelSpec, num_classes: int, resolution: int) -> PixelModel:
    """The untrained architecture, wrapped to take pixels at the dataset resolution unless the spec says else."""
    model = create_timm(replace(spec, pretrained=False), num_classes, int(spec.train_seed or 0))
    return PixelModel.from_timm(model, data_overrides(replace(spec, input_size=spec.input_size or "dataset"), resolution))


def load_or_train(
    spec: ModelSpec,
    train_data: Dataset | None,
    test_data: Dataset,
    num_classes: int,
    resolution: int,
    dataset_name: str,
    train_cfg: TrainConfig,
    cache_dir: str | Path,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> tuple[PixelModel, str, dict[str, Any]]:
    """Load a zoo model from the cache, or train it (Lightning) and cache it. Returns (model, key, info).

    Training happens under a lock on the weights file: a second run waits, then loads what the first trained.
    A damaged cached file is moved aside (warning) and the model retrained.
    """
    train_cfg = replace(train_cfg, **dict(spec.train))
    if train_data is None:
        raise SatlabError(
            f"zoo model '{spec.name}' needs the training split (its weights are identified by the training data), "
            f"but dataset '{dataset_name}' has none: set dataset.train_root, or use pretrained/checkpoint models"
        )
    trainer_kwargs = dict(trainer_kwargs or {})
    key = zoo_key(spec, train_cfg, data_fingerprint(train_data), resolution, num_classes,
                  str(trainer_kwargs.get("precision", "32-true")))
    weights = Path(cache_dir) / "zoo" / f"{spec.name}-{key}.safetensors"
    eval_data = data_fingerprint(test_data)
    cached = _load_cached(spec, weights, num_classes, resolution, eval_data)
    if cached is None:
        with file_lock(weights, f"zoo model {spec.name}"):
            cached = _load_cached(spec, weights, num_classes, resolution, eval_data)  # trained while we waited?
            if cached is None:
                return _train(spec, train_data, test_data, num_classes, resolution, train_cfg, weights, key,
                              eval_data, trainer_kwargs)
    log.info("zoo model %s: loaded cached weights %s", spec.name, weights.name)
    return cached[0], key, cached[1]


def _load_cached(
    spec: ModelSpec, weights: Path, num_classes: int, resolution: int, eval_data: str
) -> tuple[PixelModel, dict[str, Any]] | None:
    """(model, info) from the cache, or None (absent, or damaged and moved aside). The cached test accuracy is
    kept only when it was measured on this run's evaluation data."""
    if not weights.is_file():
        return None
    model = build_zoo_model(spec, num_classes, resolution)
    info = read_cached_weights(model.model, weights)
    if info is None:
        return None
    if info.get("eval_data") != eval_data:
        info["test_accuracy"] = None  # measured on other evaluation images: not this run's number
    return model.eval(), info | {"cached": True}


def _train(
    spec: ModelSpec,
    train_data: Dataset,
    test_data: Dataset,
    num_classes: int,
    resolution: int,
    train_cfg: TrainConfig,
    weights: Path,
    key: str,
    eval_data: str,
    trainer_kwargs: Mapping[str, Any],
) -> tuple[PixelModel, str, dict[str, Any]]:
    pl.seed_everything(int(spec.train_seed or 0), verbose=False)
    model = build_zoo_model(spec, num_classes, resolution)
    log.info("training zoo model %s (%s, seed %s)", spec.name, spec.timm_name, spec.train_seed)
    start = time.perf_counter()
    trainer = pl.Trainer(
        max_epochs=train_cfg.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=train_cfg.epochs,
        **trainer_kwargs,
    )
    loader = DataLoader(train_data, batch_size=train_cfg.batch_size, shuffle=True, drop_last=True)
    trainer.fit(Classifier(model, train_cfg, num_classes), loader, DataLoader(test_data, batch_size=256))
    model = model.cpu().eval()
    info = {
        "name": spec.name,
        "timm_name": spec.timm_name,
        "key": key,
        "test_accuracy": round(float(trainer.callback_metrics["test_acc"]), 6),  # the final epoch's validation
        "train_seconds": round(time.perf_counter() - start, 2),
        "train": train_cfg.__dict__,
        "eval_data": eval_data,
    }
    write_cached_weights(model.model, weights, info)
    return model, key, info | {"cached": False}
