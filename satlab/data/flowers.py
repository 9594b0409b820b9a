"""Oxford Flowers-102 in torchvision's layout (`flowers-102/jpg`, `imagelabels.mat`, `setid.mat`), no download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.io import loadmat

from satlab.data.common import DatasetSplits, FileImages, balanced_subset, check_params
from satlab.data.folders import existing_dir
from satlab.utils import SatlabError

NUM_CLASSES = 102
SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}
SOURCE_HINT = (
    "get Flowers-102 from the Oxford VGG page (https://www.robots.ox.ac.uk/~vgg/data/flowers/102/) "
    "or run torchvision.datasets.Flowers102(root, download=True) on a machine with internet"
)


def flowers_dir(root: str) -> Path:
    """The `flowers-102` folder, whether `root` is its parent or the folder itself."""
    path = existing_dir(root, "dataset.root")
    return path if (path / "imagelabels.mat").exists() or path.name == "flowers-102" else path / "flowers-102"


def required(path: Path) -> Path:
    """`path` if it exists, else a SatlabError naming the missing file and where the dataset comes from."""
    if not path.exists():
        raise SatlabError(f"Flowers-102 file missing: {path}; {SOURCE_HINT}")
    return path


def read_mat(path: Path, key: str) -> np.ndarray:
    """One 1-D integer array from a .mat file."""
    try:
        return np.asarray(loadmat(required(path), squeeze_me=True)[key], dtype=np.int64).reshape(-1)
    except (KeyError, ValueError) as exc:
        raise SatlabError(f"{path} has no usable {key!r} entry ({exc}); {SOURCE_HINT}") from exc


def flowers_split(base: Path, split: str, resize: int, resolution: int) -> FileImages:
    """One split; sample_id = image number - 1 (stable across splits and subsets)."""
    if split not in SPLIT_KEYS:
        raise SatlabError(f"dataset.split must be one of {sorted(SPLIT_KEYS)}, got {split!r}")
    all_labels = read_mat(base / "imagelabels.mat", "labels") - 1
    numbers = np.sort(read_mat(base / "setid.mat", SPLIT_KEYS[split]))
    if numbers.min(initial=1) < 1 or numbers.max(initial=0) > len(all_labels):
        raise SatlabError(
            f"setid.mat refers to images beyond imagelabels.mat's {len(all_labels)} labels; {SOURCE_HINT}"
        )
    images = required(base / "jpg")
    paths = [required(images / f"image_{n:05d}.jpg") for n in numbers]
    return FileImages(paths, all_labels[numbers - 1], numbers - 1, resize, resolution)


def flowers102(
    root: str,
    name: str = "flowers102",
    split: str = "test",
    resize: int = 256,
    resolution: int = 224,
    samples_per_class: int | None = 10,
    subset_seed: int = 0,
    train_splits: tuple[str, ...] | list[str] = ("train",),
) -> DatasetSplits:
    """Flowers-102: train = the `train_splits` (`trnid`; ["train", "val"]: the 2,040 images fine-tuning uses),
    eval = `split` (test/val/train) reduced to the balanced subset."""
    check_params(resolution, resize, samples_per_class)
    train_splits = [train_splits] if isinstance(train_splits, str) else list(train_splits)
    base = flowers_dir(root)
    parts = [flowers_split(base, part, resize, resolution) for part in train_splits]
    train = None if not parts else parts[0] if len(parts) == 1 else FileImages(
        [p for part in parts for p in part.paths], np.concatenate([part.labels for part in parts]),
        np.concatenate([part.ids for part in parts]), resize, resolution)
    return DatasetSplits(
        name=name,
        train=train,
        eval=balanced_subset(flowers_split(base, split, resize, resolution), samples_per_class, subset_seed),
        num_classes=NUM_CLASSES,
        resolution=resolution,
        class_names=[f"flower {k + 1}" for k in range(NUM_CLASSES)],
    )
