"""ClassificationDataModule: the Lightning view of a satlab dataset (train / val / eval splits).

- train / val: the dataset's train split, with `val_fraction` of it held out per class (deterministic, from
  `split_seed`); with `val_fraction=0` validation runs on the eval split (the digits zoo reports that accuracy).
- eval: the dataset's eval split (the images SAT is computed on), never trained on.
- augmentation (train batches only, after transfer to the device): random shifts of up to `max_shift` pixels
  (zero padding, one shift per batch) and horizontal flips; pixels stay in [0,1].
- decoded-image cache: file datasets of at most `cache_limit` images are decoded once into uint8 memory.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from satlab.data import DatasetSplits, data_fingerprint, labels_and_ids
from satlab.data.common import LabeledDataset, TensorImages, quantize_8bit
from satlab.utils import SatlabError

CACHE_LIMIT = 20_000  # images; at 224 px about 3 GB of uint8


def held_out_positions(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of a per-class held-out share (at least one image per class with >= 2 images)."""
    if fraction <= 0:
        return np.arange(0)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        take = min(len(members) - 1, max(1, int(round(fraction * len(members)))))
        if take > 0:
            chosen.append(np.random.default_rng([seed, int(cls)]).choice(members, size=take, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.arange(0)


def decoded(ds: LabeledDataset, limit: int = CACHE_LIMIT) -> LabeledDataset:
    """`ds` as in-memory uint8 images (decoded once) when it is small and not in memory already."""
    if isinstance(ds, TensorImages) or len(ds) > limit or len(ds) == 0:
        return ds
    images = torch.cat([quantize_8bit(x) for x, _, _ in DataLoader(ds, batch_size=256, shuffle=False)])
    cached = TensorImages(images, ds.labels, ds.ids)
    fingerprint = getattr(ds, "_satlab_fingerprint", None)
    if fingerprint is not None:  # same pixels, labels and ids
        cached._satlab_fingerprint = fingerprint
    return cached


def shift_batch(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """One random translation of up to `max_shift` pixels for the whole batch (zero padding)."""
    if max_shift <= 0:
        return x
    dx, dy = torch.randint(-max_shift, max_shift + 1, (2,)).tolist()
    padded = F.pad(x, (max_shift,) * 4)
    h, w = x.shape[-2:]
    return padded[..., max_shift + dy : max_shift + dy + h, max_shift + dx : max_shift + dx + w]


def augment_batch(x: torch.Tensor, max_shift: int = 0, hflip: bool = False) -> torch.Tensor:
    """Train-time augmentation of a pixel batch in [0,1]."""
    x = shift_batch(x, int(max_shift))
    if hflip:
        flip = torch.rand(x.shape[0], device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


class ClassificationDataModule(pl.LightningDataModule):
    """Train / val / eval loaders over a `DatasetSplits`."""

    def __init__(
        self,
        data: DatasetSplits,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        val_fraction: float = 0.0,
        split_seed: int = 0,
        augment: Mapping[str, Any] | None = None,
        num_workers: int = 0,
        cache_images: bool | str = "auto",
    ) -> None:
        super().__init__()
        if data.train is None or len(data.train) == 0:
            raise SatlabError(
                f"dataset '{data.name}' has an empty train split; training needs labelled training images "
                "(e.g. dataset.train_root=... for image folders)"
            )
        augment = dict(augment or {})
        unknown = set(augment) - {"max_shift", "hflip"}
        if unknown:
            raise SatlabError(f"augment: unknown option(s) {sorted(unknown)}; known: max_shift, hflip")
        self.data = data
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.augment = augment
        self.num_workers = int(num_workers)
        train = data.train
        if cache_images is True or (cache_images == "auto" and isinstance(train, LabeledDataset)):
            train = decoded(train)
        labels, _ = labels_and_ids(train)
        held = held_out_positions(labels, float(val_fraction), int(split_seed))
        if len(held) and not isinstance(train, LabeledDataset):
            raise SatlabError("val_fraction > 0 needs a satlab dataset as train split")
        if len(held):
            keep = np.setdiff1d(np.arange(len(labels)), held)
            self.train_set: Dataset = train.take(keep)
            self.val_set: Dataset = train.take(held)
        else:
            self.train_set, self.val_set = train, data.eval
        if len(self.train_set) < self.batch_size:
            raise SatlabError(
                f"dataset '{data.name}': {len(self.train_set)} training images, fewer than one batch "
                f"(batch_size {self.batch_size}); lower the recipe's batch_size"
            )
        self.eval_set = data.eval

    def fingerprint(self) -> str:
        """Content hash of the images actually trained on (pixels, labels, ids)."""
        return data_fingerprint(self.train_set)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.eval_batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_set, batch_size=self.eval_batch_size, num_workers=self.num_workers)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training and self.augment:
            x, y, ids = batch
            return augment_batch(x, **self.augment), y, ids
        return batch
