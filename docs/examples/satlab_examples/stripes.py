"""A dataset of one's own: stripes in three orientations (horizontal, vertical, diagonal), generated in memory.

A dataset is any function that returns `satlab.data.DatasetSplits`: images as float32 [3,R,R] on 8-bit levels
(uint8 held in `TensorImages`), integer labels and stable sample ids. Its config (`conf/dataset/stripes.yaml`)
names this function as `_target_`; every key of the YAML is an argument.
"""

from __future__ import annotations

import numpy as np
import torch

from satlab.data import DatasetSplits
from satlab.data.common import TensorImages, balanced_subset, check_params

CLASSES = ("horizontal", "vertical", "diagonal")


def _stripes(label: int, resolution: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 [3,R,R] image: stripes of a random period, phase and two random colours."""
    y, x = np.mgrid[0:resolution, 0:resolution]
    coordinate = (y, x, x + y)[label]
    period = rng.integers(4, 9)
    mask = ((coordinate + rng.integers(0, period)) // (period / 2)) % 2 == 0
    dark, light = rng.integers(0, 100, size=3), rng.integers(156, 256, size=3)
    return np.where(mask[None], light[:, None, None], dark[:, None, None]).astype(np.uint8)


def _images(per_class: int, resolution: int, seed: int, offset: int) -> tuple[TensorImages, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    images = np.stack([_stripes(int(label), resolution, rng) for label in labels])
    ids = offset + np.arange(len(labels))  # stable sample ids: never reused between the splits
    return TensorImages(torch.from_numpy(images), labels, ids), labels


def stripes(
    name: str = "stripes",
    resolution: int = 32,
    train_per_class: int = 50,
    test_per_class: int = 20,
    samples_per_class: int | None = None,
    subset_seed: int = 0,
    seed: int = 0,
) -> DatasetSplits:
    """`train_per_class` training and `test_per_class` evaluation images per class, drawn from `seed`;
    evaluation is reduced to `samples_per_class` per class (satlab's balanced subset)."""
    check_params(resolution, None, samples_per_class)
    train, _ = _images(train_per_class, resolution, seed, offset=0)
    test, _ = _images(test_per_class, resolution, seed + 1, offset=len(CLASSES) * train_per_class)
    return DatasetSplits(
        name=name,
        train=train,
        eval=balanced_subset(test, samples_per_class, subset_seed),
        num_classes=len(CLASSES),
        resolution=resolution,
        class_names=list(CLASSES),
    )
