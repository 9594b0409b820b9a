"""torchvision's image classification datasets (`dataset=torchvision dataset.name=<class>`), offline by default.

One split evaluates (`split`, default test), another trains the zoo and fine-tuned models (`train_split`, default
train); both are reduced to seeded class-balanced subsets (`samples_per_class`, `train_per_class`), turned to
3 channels (grey images repeated) and fitted to `resolution` (shorter side resized, bilinear and antialiased,
then a center crop; nothing is resampled when the images are already R x R).

How the files are read:

- MNIST, FashionMNIST, KMNIST: satlab reads the IDX files itself (`{train,t10k}-{images-idx3,labels-idx1}-ubyte`,
  gzipped or not) from torchvision's layout `<root>/<Class>/raw/`, or from `<root>` itself (a flat folder of the
  four files, like Debian's `dataset-fashion-mnist` in /usr/share/datasets/fashion-mnist), or `<root>/raw`.
  In memory as uint8 (`TensorImages`): the content fingerprint hashes the tensor directly.
- CIFAR10, CIFAR100: satlab reads torchvision's python-pickle batches (`<root>/cifar-10-batches-py/` or
  `cifar-100-python/`, or `<root>` being that folder), file names taken from torchvision's class. In memory too.
- every other classification class (SVHN, STL10, GTSRB, DTD, ...): torchvision's own class reads its layout;
  images are decoded on access (PIL, converted to RGB) and labels are read from the class's label list.

sample_id = the image's position in its split (stable across subsets). With `download=true` torchvision fetches
the files into `root` when they are not there already; otherwise nothing is ever downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from satlab.data.common import (DECODES, DatasetSplits, LabeledDataset, TensorImages, balanced_positions, check_params,
                                quantize_8bit)
from satlab.data.torchvision_files import (RESERVED_KWARGS, RESIZE_CHUNK, RawSplit, check_split_names, dataset_class,
                                          read_split)
from satlab.utils import SatlabError

log = logging.getLogger(__name__)

# --- pixels -------------------------------------------------------------------------------------------------


def fit_resolution(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 [N,C,H,W] -> uint8 [N,3,R,R]: shorter side resized to R (bilinear; antialiased when shrinking),
    center crop, grey (C = 1) repeated on 3 channels (a view); the pixels are untouched when already R x R."""
    n, c, h, w = images.shape
    if (h, w) != (resolution, resolution):
        scale = resolution / min(h, w)
        size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
        out = torch.empty((n, c, resolution, resolution), dtype=torch.uint8)
        for start in range(0, n, RESIZE_CHUNK):
            x = images[start:start + RESIZE_CHUNK].float().div_(255.0)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
            out[start:start + RESIZE_CHUNK] = quantize_8bit(TF.center_crop(x, [resolution, resolution]))
        images = out
    return images.expand(-1, 3, -1, -1) if c == 1 else images


class FittedImages(TensorImages):
    """In-memory uint8 images at their native size, fitted to R x R (`fit_resolution`) on first use, all at once.

    A train split nobody trains on (a task=sat run) is never resized. Items and `images` are TensorImages'.

    Args:
        native: uint8 [N,C,H,W] (C = 1 or 3).
        labels, ids: int [N].
        resolution: R.
    """

    def __init__(self, native: torch.Tensor, labels: np.ndarray, ids: np.ndarray, resolution: int) -> None:
        LabeledDataset.__init__(self, labels, ids)
        if native.dtype != torch.uint8 or native.ndim != 4 or len(native) != len(self.labels):
            raise ValueError("native images must be uint8 [N,C,H,W] with one row per label")
        self.native = native
        self.resolution = resolution
        self._fitted: torch.Tensor | None = None

    @property
    def images(self) -> torch.Tensor:  # type: ignore[override]
        """uint8 [N,3,R,R]."""
        if self._fitted is None:
            self._fitted = fit_resolution(self.native, self.resolution)
        return self._fitted

    def take(self, positions: np.ndarray) -> "FittedImages":
        index = torch.as_tensor(positions, dtype=torch.long)
        return FittedImages(self.native[index], self.labels[positions], self.ids[positions], self.resolution)


def pil_pixels(image: Any, resolution: int) -> torch.Tensor:
    """One decoded item (PIL image, HWC array or CHW tensor) -> uint8 [3,R,R] (counted in `DECODES`)."""
    DECODES.add()
    if isinstance(image, torch.Tensor):
        image = TF.to_pil_image(image)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    rgb = image.convert("RGB")
    rgb = TF.resize(rgb, resolution, interpolation=InterpolationMode.BILINEAR)
    return TF.pil_to_tensor(TF.center_crop(rgb, [resolution, resolution]))


class VisionImages(LabeledDataset):
    """Items of a torchvision dataset decoded on access; sample id = position in the split.

    Args:
        base: the torchvision dataset (no transform).
        positions: which of its items, int [K] (the sample ids).
        labels: their labels, int [K].
        resolution: R of the float32 [3,R,R] images returned.
    """

    def __init__(self, base: Dataset, positions: np.ndarray, labels: np.ndarray, resolution: int) -> None:
        super().__init__(labels, positions)
        self.base = base
        self.resolution = resolution

    def decode(self, i: int) -> torch.Tensor:
        return pil_pixels(self.base[int(self.ids[i])][0], self.resolution)

    def take(self, positions: np.ndarray) -> "VisionImages":
        return VisionImages(self.base, self.ids[positions], self.labels[positions], self.resolution)


def split_dataset(raw: RawSplit, positions: np.ndarray, resolution: int) -> LabeledDataset:
    """The items at `positions` of a split as a satlab dataset: uint8 in memory, or decoded on access."""
    if raw.images is not None:
        index = torch.as_tensor(positions, dtype=torch.long)
        return FittedImages(raw.images[index], raw.labels[positions], positions, resolution)
    return VisionImages(raw.base, positions, raw.labels[positions], resolution)


# --- the dataset function -----------------------------------------------------------------------------------


def check_options(root: Any, train_per_class: Any, download: Any, kwargs: Any) -> None:
    """Types of the options the schema does not know, before any file is read."""
    if not isinstance(root, (str, Path)) or not str(root):
        raise SatlabError(f"dataset.root must be a folder, got {root!r}")
    if train_per_class is not None and (isinstance(train_per_class, bool) or not isinstance(train_per_class, int)
                                        or train_per_class < 0):
        raise SatlabError(f"dataset.train_per_class must be null (the whole train split) or an integer >= 0, "
                          f"got {train_per_class!r}")
    if not isinstance(download, bool):
        raise SatlabError(f"dataset.download must be true or false, got {download!r}")
    if not isinstance(kwargs, Mapping):
        raise SatlabError(f"dataset.kwargs must be a mapping of the class's further arguments, got {kwargs!r}")
    reserved = sorted(set(kwargs) & set(RESERVED_KWARGS))
    if reserved:
        raise SatlabError(f"dataset.kwargs sets {', '.join(reserved)}, which satlab sets itself; use dataset.root, "
                          "dataset.split and dataset.download")


def torchvision_dataset(
    root: str,
    name: str,
    split: str = "test",
    train_split: str | None = "train",
    resolution: int = 32,
    samples_per_class: int | None = 100,
    train_per_class: int | None = None,
    subset_seed: int = 0,
    download: bool = False,
    kwargs: Mapping[str, Any] | None = None,
) -> DatasetSplits:
    """A torchvision classification dataset as satlab's `DatasetSplits` (module docstring).

    Args:
        root: torchvision's root folder for the class, or (MNIST-style sets, CIFAR) the folder of the files.
        name: the torchvision.datasets class, e.g. FashionMNIST, CIFAR10, SVHN.
        split: the evaluation split (test; or any split the class has).
        train_split: the split the zoo and fine-tuning train on; None: no train split.
        resolution: R of the float32 [3,R,R] images.
        samples_per_class: eval images per class (seeded balanced subset; None = the whole split).
        train_per_class: train images per class (seeded balanced subset; None = the whole split, 0 = none).
        subset_seed: seeds both subsets (each class its own generator), independent of the run's seed.
        download: let torchvision download missing files into root (default: never).
        kwargs: further arguments of the class (e.g. {"split": "balanced"} for EMNIST).
    Returns:
        DatasetSplits named `name`: eval (and train) items `(float32 [3,R,R], label, sample_id)`.
    """
    kwargs = {} if kwargs is None else kwargs
    check_params(resolution, None, samples_per_class)
    check_options(root, train_per_class, download, kwargs)
    cls = dataset_class(name)
    check_split_names(cls, split, train_split)
    path = Path(root).expanduser()
    if not path.is_dir() and not download:
        raise SatlabError(f"dataset.root {str(root)!r} is not an existing directory; set it to the folder holding "
                          f"{name}'s files (torchvision's layout; for MNIST-style sets also a flat folder of the IDX "
                          "files), or add dataset.download=true to let torchvision fetch them")
    kwargs = dict(kwargs)
    evaluation = read_split(cls, path, split, download, kwargs, "dataset.split")
    eval_positions = balanced_positions(evaluation.labels, samples_per_class, subset_seed)
    train = None
    train_classes: list[str] | None = None
    num_classes = int(evaluation.labels.max(initial=-1)) + 1
    if train_split is not None:
        raw_train = read_split(cls, path, train_split, download, kwargs, "dataset.train_split")
        train_classes = raw_train.classes
        num_classes = max(num_classes, int(raw_train.labels.max(initial=-1)) + 1)
        positions = (np.arange(0) if train_per_class == 0
                     else balanced_positions(raw_train.labels, train_per_class, subset_seed))
        train = split_dataset(raw_train, positions, resolution)
    classes = evaluation.classes or train_classes
    if classes is not None and len(classes) >= num_classes:
        num_classes = len(classes)
    else:
        if classes is not None:  # torchvision's own reader: its class list may not cover its labels
            log.warning("%s: labels go up to %d but torchvision's class list has %d name(s); the classes are "
                        "named 0..%d instead", name, num_classes - 1, len(classes), num_classes - 1)
        classes = [str(k) for k in range(num_classes)]
    return DatasetSplits(
        name=name,
        train=train,
        eval=split_dataset(evaluation, eval_positions, resolution),
        num_classes=num_classes,
        resolution=resolution,
        class_names=classes,
    )
