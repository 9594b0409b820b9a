"""scikit-learn's bundled 8x8 digits (offline), upsampled to RGB images on 8-bit levels, kept in memory."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from satlab.data.common import (DatasetSplits, TensorImages, balanced_subset, check_params, check_samples_per_class,
                                quantize_8bit)
from satlab.utils import SatlabError

TEST_SIZE = 0.2  # fixed stratified split: the same images are always train / test
SPLIT_SEED = 0


def digit_images(resolution: int) -> tuple[torch.Tensor, np.ndarray]:
    """All 1797 digits as uint8 `[N,3,R,R]` (bilinear upsampling, align_corners=False) and their labels."""
    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).div(16.0).unsqueeze(1)
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return quantize_8bit(x).expand(-1, 3, -1, -1).contiguous(), bunch.target.astype(np.int64)


def add_noise(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """uint8 grey images `[N,3,R,R]` plus seeded Gaussian noise (same on the 3 channels), back on 8-bit levels."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(images[:, :1].shape, generator=gen) * std
    return quantize_8bit(images.float().div(255.0) + noise).expand(-1, 3, -1, -1).contiguous()


def digits(
    name: str = "digits",
    resolution: int = 32,
    samples_per_class: int | None = None,
    subset_seed: int = 0,
    eval_noise: float = 0.0,
    train_per_class: int | None = None,
) -> DatasetSplits:
    """Digits with a fixed stratified 80/20 split; sample_id = index into `load_digits()`.

    `samples_per_class` / `train_per_class`: balanced subsets of the eval / train split (None = all), drawn by
    `subset_seed` (a smaller train split trains a zoo faster, e.g. in tests).

    `eval_noise` > 0 makes a harder evaluation variant: Gaussian pixel noise of that standard deviation ([0,1]
    units, fixed per image: one seeded draw over all 1797 digits) on the eval images only; train stays clean.
    """
    check_params(resolution, None, samples_per_class)
    check_samples_per_class(train_per_class, "dataset.train_per_class")
    if isinstance(eval_noise, bool) or not isinstance(eval_noise, (int, float)) or not 0 <= eval_noise <= 1:
        raise SatlabError(f"dataset.eval_noise must be a number in [0, 1] (pixel noise std), got {eval_noise!r}")
    images, labels = digit_images(resolution)
    ids = np.arange(len(labels))
    train_ids, test_ids = train_test_split(
        ids, test_size=TEST_SIZE, stratify=labels, random_state=SPLIT_SEED
    )
    train_ids, test_ids = np.sort(train_ids), np.sort(test_ids)
    full = TensorImages(images, labels, ids)
    noisy = TensorImages(add_noise(images, float(eval_noise)), labels, ids) if eval_noise else full
    return DatasetSplits(
        name=name,
        train=balanced_subset(full.take(train_ids), train_per_class, subset_seed),
        eval=balanced_subset(noisy.take(test_ids), samples_per_class, subset_seed),
        num_classes=10,
        resolution=resolution,
        class_names=[str(d) for d in range(10)],
    )
