"""Pieces shared by every dataset: the splits container, labelled datasets, balanced subsets, 8-bit pixels."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from satlab.utils import SatlabError

Item = tuple[torch.Tensor, int, int]


MIN_CLASSES = 2  # SAT needs at least two classes: see DatasetSplits


@dataclass(frozen=True)
class DatasetSplits:
    """What every dataset function returns. `eval` is already reduced to the balanced subset.

    Refuses fewer than MIN_CLASSES classes, both in the label space and among the evaluation images: with one
    class a model cannot be fooled (its only answer stays right), so every SAT would be the floor ln(eps_s), and
    a constant model would count as correct on every image.
    """

    name: str
    train: Dataset | None
    eval: Dataset
    num_classes: int
    resolution: int
    class_names: list[str]
    notes: list[str] = field(default_factory=list)  # what the run should know (said on the console, in summary.json)

    def __post_init__(self) -> None:
        if self.num_classes < MIN_CLASSES:
            raise SatlabError(
                f"dataset '{self.name}' has {self.num_classes} class(es) ({', '.join(self.class_names)}); SAT needs "
                f"at least {MIN_CLASSES}: with one class no attack can change a prediction and every SAT would be "
                "ln(sat.eps_s); add class folders"
            )
        if len(self.eval) == 0:
            return
        present = np.unique(labels_and_ids(self.eval)[0])
        if len(present) < MIN_CLASSES:
            raise SatlabError(
                f"the evaluation images of dataset '{self.name}' are all of one class ({self.class_names[present[0]]}); "
                f"SAT needs images of at least {MIN_CLASSES} classes (a model that always answers that class would "
                "count as correct on every image); point dataset.root at a folder with more classes"
            )


class LabeledDataset(Dataset):
    """A dataset whose labels and stable sample ids are known without decoding any image.

    Items are `(image float32 [3,R,R] on 8-bit levels, label int, sample_id int)`.
    Subclasses implement `_image(i)` (or `decode(i)`, for images decoded from files) and `take(positions)`.
    Once the images are decoded (`satlab.data.pixels.decode_pixels`, during the content fingerprint's pass), items
    are read from `pixels()` and nothing is decoded again.
    """

    labels: np.ndarray
    ids: np.ndarray
    decoded: np.ndarray | None = None  # uint8 [N,3,R,R] (in memory or memory-mapped) once decoded, else None

    def __init__(self, labels: Sequence[int], ids: Sequence[int]) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids = np.asarray(ids, dtype=np.int64)
        if self.labels.shape != self.ids.shape:
            raise ValueError("labels and ids must have the same length")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Item:
        if self.decoded is not None:
            return uint8_to_float(torch.from_numpy(np.array(self.decoded[i]))), int(self.labels[i]), int(self.ids[i])
        return self._image(i), int(self.labels[i]), int(self.ids[i])

    def pixels(self) -> np.ndarray | torch.Tensor | None:
        """uint8 [N,3,R,R] of every item when at hand without decoding (in memory or memory-mapped), else None."""
        return self.decoded

    def decode(self, i: int) -> torch.Tensor:
        """Item i's image decoded from its file, uint8 [3,R,R] (datasets decoded on access)."""
        raise NotImplementedError

    def _image(self, i: int) -> torch.Tensor:
        return uint8_to_float(self.decode(i))

    def take(self, positions: np.ndarray) -> "LabeledDataset":
        """A dataset of the same kind holding only the items at `positions` (ids unchanged)."""
        raise NotImplementedError


class TensorImages(LabeledDataset):
    """In-memory uint8 images `[N,3,R,R]`, converted to float32 in [0,1] on access."""

    def __init__(self, images: torch.Tensor, labels: Sequence[int], ids: Sequence[int]) -> None:
        super().__init__(labels, ids)
        if images.dtype != torch.uint8 or len(images) != len(self.labels):
            raise ValueError("images must be a uint8 tensor with one row per label")
        self.images = images

    def _image(self, i: int) -> torch.Tensor:
        return uint8_to_float(self.images[i])

    def pixels(self) -> torch.Tensor:
        return self.images

    def take(self, positions: np.ndarray) -> "TensorImages":
        index = torch.as_tensor(positions, dtype=torch.long)
        return TensorImages(self.images[index], self.labels[positions], self.ids[positions])


class FileImages(LabeledDataset):
    """Images read from disk, resized (shorter side) then center-cropped, in pixel space."""

    def __init__(
        self, paths: Sequence[Path], labels: Sequence[int], ids: Sequence[int], resize: int, resolution: int
    ) -> None:
        super().__init__(labels, ids)
        if len(paths) != len(self.labels):
            raise ValueError("paths and labels must have the same length")
        self.paths = list(paths)
        self.resize = resize
        self.resolution = resolution

    def decode(self, i: int) -> torch.Tensor:
        return decode_image(self.paths[i], self.resize, self.resolution)

    def take(self, positions: np.ndarray) -> "FileImages":
        paths = [self.paths[p] for p in positions]
        return FileImages(paths, self.labels[positions], self.ids[positions], self.resize, self.resolution)


def uint8_to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0,1]; every value satisfies round(x*255)/255 == x."""
    return image.to(torch.float32).div_(255.0)


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Float image in [0,1] -> uint8 levels (rounded, clamped)."""
    return x.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


class DecodeCounter:
    """How many images this process has decoded from files (every call of `decode_image`, any thread): what
    "each image decoded once per map" is counted by (tests, `make bench`). Decodes in DataLoader worker
    processes are counted in those processes, not here."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.value += n


DECODES = DecodeCounter()


def decode_image(path: Path, resize: int, resolution: int) -> torch.Tensor:
    """Decode an image as RGB, resize its shorter side to `resize` (bilinear), center-crop `resolution`.

    Returns:
        uint8 [3, resolution, resolution]; an unreadable file is one SatlabError naming it.
    """
    DECODES.add()
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:  # PIL: a broken PNG is a SyntaxError
        raise SatlabError(f"cannot read image {path}: {exc}; remove or replace the file") from exc
    rgb = TF.resize(rgb, resize, interpolation=InterpolationMode.BILINEAR)
    rgb = TF.center_crop(rgb, [resolution, resolution])
    return TF.pil_to_tensor(rgb)


def check_samples_per_class(samples_per_class: int | None, key: str = "dataset.samples_per_class") -> None:
    """None (all images) or a positive integer."""
    if samples_per_class is None:
        return
    if isinstance(samples_per_class, bool) or not isinstance(samples_per_class, int) or samples_per_class < 1:
        raise SatlabError(f"{key} must be a positive integer or null (all images), got {samples_per_class!r}")


def check_params(resolution: int, resize: int | None, samples_per_class: int | None) -> None:
    """Reject bad sizes, a resize smaller than the crop, and a bad samples_per_class, before any loading."""
    check_samples_per_class(samples_per_class)
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise SatlabError(f"dataset.resolution must be a positive integer, got {resolution!r}")
    if resize is not None:
        if isinstance(resize, bool) or not isinstance(resize, int) or resize < 1:
            raise SatlabError(f"dataset.resize must be a positive integer, got {resize!r}")
        if resize < resolution:
            raise SatlabError(
                f"dataset.resize ({resize}) must be >= dataset.resolution ({resolution}): "
                "the shorter side is resized first, then the center crop is taken"
            )


def balanced_positions(labels: np.ndarray, samples_per_class: int | None, subset_seed: int = 0) -> np.ndarray:
    """Sorted positions of a class-balanced subset: at most `samples_per_class` per class (None = all).

    Each class draws from its own generator seeded by (subset_seed, class), so the choice never depends
    on the global RNG nor on which other classes are present.
    """
    labels = np.asarray(labels)
    check_samples_per_class(samples_per_class)
    if isinstance(subset_seed, bool) or not isinstance(subset_seed, int) or subset_seed < 0:
        raise SatlabError(f"dataset.subset_seed must be a non-negative integer, got {subset_seed!r}")
    if samples_per_class is None:
        return np.arange(len(labels))
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) > samples_per_class:
            rng = np.random.default_rng([subset_seed, int(cls)])
            members = rng.choice(members, size=samples_per_class, replace=False)
        chosen.append(members)
    return np.sort(np.concatenate(chosen)) if chosen else np.arange(0)


def balanced_subset(ds: LabeledDataset, samples_per_class: int | None, subset_seed: int = 0) -> LabeledDataset:
    """`ds` reduced to a deterministic class-balanced subset (see `balanced_positions`)."""
    if samples_per_class is None:
        return ds
    return ds.take(balanced_positions(ds.labels, samples_per_class, subset_seed))


def labels_and_ids(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Labels and stable sample ids of a satlab dataset (or a torch Subset of one), without decoding images."""
    if isinstance(ds, Subset):
        labels, ids = labels_and_ids(ds.dataset)
        index = np.asarray(ds.indices, dtype=np.int64)
        return labels[index], ids[index]
    if isinstance(ds, LabeledDataset):
        return ds.labels.copy(), ds.ids.copy()
    raise TypeError(f"labels_and_ids needs a satlab dataset or a Subset of one, got {type(ds).__name__}")
