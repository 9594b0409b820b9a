"""torchvision's classification classes and reading one split of them (`satlab.data.torchvision_sets` builds the
dataset from it): MNIST-style IDX files (torchvision's layout or a flat folder such as Debian's), CIFAR's
python-pickle batches, or any other class's own layout.
"""

from __future__ import annotations

import difflib
import gzip
import inspect
import logging
import pickle
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from satlab.utils import SatlabError

log = logging.getLogger(__name__)


IDX_SETS = ("MNIST", "FashionMNIST", "KMNIST")  # read by satlab from their IDX files
CIFAR_SETS = ("CIFAR10", "CIFAR100")  # read by satlab from torchvision's pickle batches
IDX_PREFIX = {"train": "train", "test": "t10k"}
CIFAR_CLASSES = {"CIFAR10": 10, "CIFAR100": 100}  # class names when batches.meta is absent: the numbers
# torchvision.datasets classes that are not single-label image classification (or not a dataset of files)
NOT_CLASSIFICATION = {
    "VisionDataset", "DatasetFolder", "ImageFolder", "FakeData", "LSUN", "LSUNClass", "CocoCaptions",
    "CocoDetection", "MovingMNIST", "PhotoTour", "SBU", "Flickr8k", "Flickr30k", "VOCSegmentation", "VOCDetection",
    "Cityscapes", "CelebA", "WIDERFace", "SBDataset", "Kinetics", "HMDB51", "UCF101", "Kitti", "LFWPairs",
    "KittiFlow", "Sintel", "FlyingChairs", "FlyingThings3D", "HD1K", "Kitti2012Stereo", "Kitti2015Stereo",
    "CarlaStereo", "Middlebury2014Stereo", "CREStereo", "FallingThingsStereo", "SceneFlowStereo", "SintelStereo",
    "InStereo2k", "ETH3DStereo",
}
PLACEHOLDER = "torchvision"  # conf/dataset/torchvision.yaml's name until the user picks a class
EXAMPLES = ("FashionMNIST", "MNIST", "KMNIST", "CIFAR10", "CIFAR100", "SVHN", "STL10")
RESERVED_KWARGS = ("root", "train", "download", "transform", "target_transform", "transforms")
RESIZE_CHUNK = 4096  # images resized at a time (bounds the float32 copy)


# --- the class ----------------------------------------------------------------------------------------------


def vision_classes() -> list[str]:
    """Names of torchvision.datasets' dataset classes (subclasses of VisionDataset), in torchvision's order."""
    import torchvision.datasets as tvd

    return [n for n in tvd.__all__ if isinstance(getattr(tvd, n, None), type)
            and issubclass(getattr(tvd, n), tvd.VisionDataset) and n != "VisionDataset"]


def split_kind(cls: type) -> str | None:
    """How `cls` picks a split: "train" (a bool argument), "split" (a name), or None (it has no splits)."""
    params = init_params(cls)
    return "train" if "train" in params else "split" if "split" in params else None


def classification_classes() -> list[str]:
    """The torchvision dataset classes satlab can use: single-label image classification with splits."""
    import torchvision.datasets as tvd

    return [n for n in vision_classes() if n not in NOT_CLASSIFICATION and split_kind(getattr(tvd, n))]


def dataset_class(name: str) -> type:
    """torchvision.datasets.<name>, or a SatlabError with the close matches among the usable classes."""
    import torchvision.datasets as tvd

    usable = classification_classes()
    if name == PLACEHOLDER:
        raise SatlabError(f"dataset=torchvision needs the class: add dataset.name=<a torchvision.datasets "
                          f"classification class>, e.g. {', '.join(n for n in EXAMPLES if n in usable)}")
    if name in usable:
        return getattr(tvd, name)
    if name in ("ImageFolder", "DatasetFolder"):
        raise SatlabError(f"dataset.name={name} is a generic folder loader; use dataset=imagefolder "
                          "dataset.root=<class-folder tree> instead")
    if name in vision_classes() and name not in NOT_CLASSIFICATION:
        raise SatlabError(f"torchvision.datasets.{name} has no train/test splits (its arguments: "
                          f"{', '.join(sorted(init_params(getattr(tvd, name)) - {'self'}))}); satlab needs an "
                          "evaluation split: use dataset=imagefolder on its files")
    if name in vision_classes():
        raise SatlabError(f"dataset.name={name}: torchvision.datasets.{name} is not a single-label image "
                          f"classification dataset; satlab needs one, e.g. {', '.join(usable[:8])}")
    lower = {n.lower(): n for n in usable}
    close = [lower[c] for c in difflib.get_close_matches(str(name).lower(), list(lower), n=3, cutoff=0.6)]
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise SatlabError(f"dataset.name={name} is not a torchvision dataset class; {hint}choose one of "
                      f"torchvision.datasets' classification classes: {', '.join(usable)}")


def init_params(cls: type) -> set[str]:
    """Named parameters of `cls.__init__`, following `**kwargs` into the base classes' (EMNIST -> MNIST)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


# --- reading a split ----------------------------------------------------------------------------------------


@dataclass
class RawSplit:
    """One split as read: either in-memory `images` (uint8 [N,C,H,W], C = 1 or 3) or a torchvision dataset
    `base` decoded on access; `labels` int64 [N]; `classes` the class names when the files say them."""

    labels: np.ndarray
    images: torch.Tensor | None = None
    base: Dataset | None = None
    classes: list[str] | None = None


def read_idx(path: Path) -> np.ndarray:
    """An IDX (MNIST-format) file of unsigned bytes, gzipped or not, as a uint8 array of its dimensions.

    Args:
        path: `*-ubyte` or `*-ubyte.gz`.
    Returns:
        uint8 [N] (labels, idx1) or [N,H,W] (images, idx3).
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a gzip stream damaged after its header
        raise SatlabError(f"cannot read {path}: {exc}; the file is damaged: replace it with an intact copy") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 3:
        raise SatlabError(f"{path} is not an IDX file of unsigned bytes (magic 0x0000080n); replace the file")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    if len(data) != header + int(np.prod(dims)):
        raise SatlabError(f"{path} holds {len(data) - header} bytes of data, its header says {dims}; "
                          "the file is truncated or corrupt: replace it")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def idx_file(folder: Path, stem: str) -> Path | None:
    """`folder/stem` or `folder/stem.gz`, whichever exists (the uncompressed one first)."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def idx_folders(root: Path, name: str) -> list[Path]:
    """Where the IDX files of `name` may lie: torchvision's layout first, then a flat folder."""
    return [root / name / "raw", root, root / "raw", root / name]


def find_idx(root: Path, name: str, split: str) -> tuple[Path, Path] | None:
    """(images, labels) files of `split` in the first folder holding both, or None."""
    prefix = IDX_PREFIX[split]
    for folder in idx_folders(root, name):
        images = idx_file(folder, f"{prefix}-images-idx3-ubyte")
        labels = idx_file(folder, f"{prefix}-labels-idx1-ubyte")
        if images is not None and labels is not None:
            return images, labels
    return None


def idx_expected(root: Path, name: str, split: str) -> str:
    """Where the IDX files of `split` were looked for, for the error message."""
    prefix = IDX_PREFIX[split]
    return (f"{prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz] in {root / name / 'raw'} "
            f"(torchvision's layout) or in {root} itself (a flat folder, like Debian's "
            "/usr/share/datasets/fashion-mnist)")


def read_idx_split(cls: type, root: Path, split: str, download: bool) -> RawSplit:
    """MNIST, FashionMNIST or KMNIST: one split (train or test, checked by `check_split_names`) from its IDX
    files (module docstring)."""
    name = cls.__name__
    found = find_idx(root, name, split)
    if found is None and download:
        fetch(cls, root, {"train": split == "train"})
        found = find_idx(root, name, split)
    if found is None:
        raise SatlabError(f"no {name} {split} files under {root}: expected {idx_expected(root, name, split)}; "
                          f"or add dataset.download=true (torchvision fetches them into {root / name / 'raw'})")
    images, labels = (read_idx(p) for p in found)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise SatlabError(f"{found[0]} ({images.shape}) and {found[1]} ({labels.shape}) do not hold one label "
                          "per image; replace them")
    check_label_range(labels, len(cls.classes), f"{found[1]}", name)
    return RawSplit(labels=labels.astype(np.int64), images=torch.from_numpy(images.copy()).unsqueeze(1),
                    classes=list(cls.classes))


def check_label_range(labels: np.ndarray, n_classes: int, source: str, name: str) -> None:
    """Refuse labels outside 0 .. n_classes - 1 (a damaged file, or another dataset's), naming `source` and the
    values, rather than run with classes the dataset does not have.

    Args:
        labels: [N] integer labels as read.
        n_classes: the dataset's class count (torchvision's class list).
        source: the file (or folder) the labels came from.
        name: the dataset class, e.g. FashionMNIST.
    """
    labels = np.asarray(labels)
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        values = np.unique(labels[bad])
        shown = ", ".join(str(v) for v in values[:5]) + (f" and {len(values) - 5} more" if len(values) > 5 else "")
        raise SatlabError(f"{source}: {int(bad.sum())} label(s) outside 0..{n_classes - 1} ({name} has {n_classes} "
                          f"classes): {shown}; the file is damaged or not {name}'s, replace it")


def cifar_folder(cls: type, root: Path) -> Path:
    """The folder of the pickle batches: `<root>/<base_folder>`, or `root` when it is that folder."""
    if (root / cls.meta["filename"]).is_file() or root.name == cls.base_folder:
        return root
    return root / cls.base_folder


def read_cifar_split(cls: type, root: Path, split: str, download: bool) -> RawSplit:
    """CIFAR10 or CIFAR100: one split (train or test, checked by `check_split_names`) from torchvision's
    python-pickle batches (module docstring)."""
    name = cls.__name__
    files = [f for f, _ in (cls.train_list if split == "train" else cls.test_list)]
    folder = cifar_folder(cls, root)
    if download and not all((folder / f).is_file() for f in files):
        fetch(cls, root, {"train": split == "train"})
        folder = cifar_folder(cls, root)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise SatlabError(f"no {name} {split} files under {root}: expected {cls.base_folder}/ with "
                          f"{', '.join(files)} and {cls.meta['filename']} (torchvision's layout; missing: "
                          f"{', '.join(missing)}); or add dataset.download=true (torchvision fetches them from "
                          f"{cls.url})")
    data, labels = [], []
    for f in files:
        entry = load_pickle(folder / f)
        try:
            data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SatlabError(f"{folder / f} is not a {name} batch (data [N,3072] and labels): {exc}; "
                              "replace the file") from exc
    if sum(len(d) for d in data) != len(labels):
        raise SatlabError(f"the {name} {split} batches in {folder} hold {sum(len(d) for d in data)} images but "
                          f"{len(labels)} labels; replace them")
    check_label_range(np.asarray(labels, dtype=np.int64), CIFAR_CLASSES[name], f"the {split} batches in {folder}",
                      name)
    classes = [str(k) for k in range(CIFAR_CLASSES[name])]
    meta = folder / cls.meta["filename"]
    if meta.is_file():
        names = load_pickle(meta).get(cls.meta["key"])
        classes = [str(n) for n in names] if isinstance(names, (list, tuple)) else classes
    return RawSplit(labels=np.asarray(labels, dtype=np.int64), images=torch.from_numpy(np.concatenate(data)),
                    classes=classes)


def load_pickle(path: Path) -> Mapping[str, Any]:
    """A CIFAR batch (a python-2 pickle of a dict; torchvision reads it the same way)."""
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise SatlabError(f"cannot read {path}: {exc}; replace the file") from exc
    if not isinstance(entry, dict):
        raise SatlabError(f"{path} does not hold a dict (a CIFAR batch); replace the file")
    return entry


def fetch(cls: type, root: Path, split_arg: Mapping[str, Any]) -> None:
    """`cls(root, download=True, ...)`: torchvision downloads the split's files into root (refused as one line)."""
    try:
        cls(root=str(root), download=True, **split_arg)
    except SatlabError:
        raise
    except Exception as exc:  # network, disk, checksum: torchvision raises many kinds
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SatlabError(f"dataset.download=true: torchvision could not download {cls.__name__} into {root} "
                          f"({first}); fetch it on a machine with internet and copy it there") from exc


def read_torchvision_split(cls: type, root: Path, split: str, download: bool, kwargs: Mapping[str, Any],
                           key: str) -> RawSplit:
    """Any other classification class: torchvision reads the split; labels from its label list."""
    name = cls.__name__
    params = init_params(cls)
    if split_kind(cls) == "train":
        split_arg: dict[str, Any] = {"train": split == "train"}
    else:  # "split": dataset_class refused the classes without splits
        split_arg = {"split": split}
    if download and "download" not in params:
        raise SatlabError(f"torchvision.datasets.{name} cannot download; put its files under {root} and set "
                          "dataset.download=false")
    extra = {"download": download} if "download" in params else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base = cls(root=str(root), **split_arg, **extra, **dict(kwargs))
    except SatlabError:
        raise
    except ValueError as exc:  # torchvision's verify_str_arg: an unknown split
        raise SatlabError(f"{key}={split!r}: torchvision.datasets.{name} says: "
                          f"{exc}") from exc
    except TypeError as exc:
        raise SatlabError(f"torchvision.datasets.{name}: {exc}; pass its required arguments in "
                          "dataset.kwargs, e.g. 'dataset.kwargs={split: balanced}' for EMNIST") from exc
    except ImportError as exc:
        raise SatlabError(f"torchvision.datasets.{name} needs a package that is not installed: {exc}") from exc
    except Exception as exc:  # RuntimeError "Dataset not found ...", FileNotFoundError, a corrupt file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = "" if download else f"; or add dataset.download=true (torchvision fetches them into {root})"
        raise SatlabError(f"torchvision.datasets.{name} found no usable {split} split under {root} ({first}); "
                          f"put its files there in torchvision's layout (see its documentation){hint}") from exc
    classes = getattr(base, "classes", None)
    classes = [str(c) for c in classes] if isinstance(classes, (list, tuple)) else None
    return RawSplit(labels=split_labels(base, name, split), base=base, classes=classes)


def split_labels(base: Dataset, name: str, split: str) -> np.ndarray:
    """int64 [N] class labels of a torchvision dataset, from its label list (decoding every item as a last
    resort); refused unless they are single non-negative integers."""
    n = len(base)
    raw: Any = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for attr in ("targets", "labels", "_labels", "y"):
            value = getattr(base, attr, None)
            if value is not None and not callable(value) and len(value) == n:
                raw = value
                break
        if raw is None:
            for attr in ("_samples", "samples", "imgs"):
                value = getattr(base, attr, None)
                if isinstance(value, (list, tuple)) and len(value) == n and all(
                        isinstance(s, (list, tuple)) and len(s) == 2 for s in value[:10]):
                    raw = [s[1] for s in value]
                    break
    if raw is None:
        log.info("torchvision.datasets.%s has no label list: decoding its %d items once for their labels", name, n)
        raw = [base[i][1] for i in range(n)]
    try:
        labels = np.asarray(raw.numpy() if isinstance(raw, torch.Tensor) else raw)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(labels.dtype)
    except (TypeError, ValueError) as exc:
        raise SatlabError(f"torchvision.datasets.{name}'s targets are not single integer class labels; "
                          "satlab needs single-label classification") from exc
    if n and labels.min() < 0:
        raise SatlabError(f"the {split} split of torchvision.datasets.{name} has unlabelled images (label "
                          f"{labels.min()}); choose a labelled split")
    return labels.astype(np.int64)


def check_split_names(cls: type, split: Any, train_split: Any) -> None:
    """Both split options, before any file is read: names; train/test for the classes with a `train` argument
    (the others' split names are checked by torchvision when it opens the split)."""
    for key, value in (("dataset.split", split), ("dataset.train_split", train_split)):
        if key == "dataset.train_split" and value is None:
            continue
        if not isinstance(value, str):
            raise SatlabError(f"{key} must be a split name, got {value!r}")
        if split_kind(cls) == "train" and value not in ("train", "test"):
            raise SatlabError(f"{key}={value!r}: {cls.__name__} has the splits train, test")


def read_split(cls: type, root: Path, split: str, download: bool, kwargs: Mapping[str, Any], key: str) -> RawSplit:
    """One split of `cls` under `root` (module docstring: which reader); `key` names the option in errors."""
    if cls.__name__ in IDX_SETS and not kwargs:
        return read_idx_split(cls, root, split, download)
    if cls.__name__ in CIFAR_SETS and not kwargs:
        return read_cifar_split(cls, root, split, download)
    return read_torchvision_split(cls, root, split, download, kwargs, key)
