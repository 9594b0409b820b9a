"""Class-folder trees (`root/<class>/<image>`): any image folder, and ImageNet with its canonical labels."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from timm.data import ImageNetInfo

from satlab.data.common import DatasetSplits, FileImages, balanced_subset, check_params
from satlab.utils import SatlabError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def existing_dir(root: str | Path, what: str) -> Path:
    """`root` as a Path, or a SatlabError saying which config key points nowhere."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise SatlabError(f"{what} {str(root)!r} is not an existing directory; set it to the dataset folder")
    return path


def class_folders(root: Path) -> list[Path]:
    """Non-hidden sub-folders of `root`, sorted by name."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise SatlabError(f"{root} has no class sub-folders; expected the layout root/<class_name>/<image files>")
    return folders


def is_image_name(name: str) -> bool:
    """A visible file with an accepted image extension (any case)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively, extensions case-insensitive, hidden files skipped),
    sorted by relative path."""
    files = [p for p in folder.rglob("*") if is_image_name(p.name) and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def scan_tree(root: Path, label_of: Callable[[str], int], resize: int, resolution: int) -> FileImages:
    """All images of a class-folder tree; sample_id = position in the sorted (class, file) list."""
    paths: list[Path] = []
    labels: list[int] = []
    for folder in class_folders(root):
        files = image_files(folder)
        paths += files
        labels += [label_of(folder.name)] * len(files)
    if not paths:
        raise SatlabError(
            f"no images found under {root} (accepted extensions: {', '.join(IMAGE_EXTENSIONS)}, any case)"
        )
    return FileImages(paths, labels, range(len(paths)), resize, resolution)


def folder_splits(
    name: str,
    root: str,
    train_root: str | None,
    class_names: list[str],
    label_of: Callable[[str], int],
    resize: int,
    resolution: int,
    samples_per_class: int | None,
    subset_seed: int,
) -> DatasetSplits:
    """Eval split from `root` (balanced subset), optional train split from `train_root`."""
    check_params(resolution, resize, samples_per_class)
    evaluation = scan_tree(existing_dir(root, "dataset.root"), label_of, resize, resolution)
    train = None
    if train_root is not None:
        train = scan_tree(existing_dir(train_root, "dataset.train_root"), label_of, resize, resolution)
    return DatasetSplits(
        name=name,
        train=train,
        eval=balanced_subset(evaluation, samples_per_class, subset_seed),
        num_classes=len(class_names),
        resolution=resolution,
        class_names=class_names,
    )


def imagefolder(
    root: str,
    name: str = "imagefolder",
    train_root: str | None = None,
    resize: int = 256,
    resolution: int = 224,
    samples_per_class: int | None = None,
    subset_seed: int = 0,
) -> DatasetSplits:
    """Any class-folder tree; classes are the sorted folder names of `root` (labels 0..K-1)."""
    names = [p.name for p in class_folders(existing_dir(root, "dataset.root"))]
    if train_root is not None:
        train_names = [p.name for p in class_folders(existing_dir(train_root, "dataset.train_root"))]
        if train_names != names:
            extra = sorted(set(train_names) ^ set(names))
            raise SatlabError(
                f"dataset.train_root and dataset.root must have the same class folders; they differ on {extra[:5]}"
            )
    index = {n: i for i, n in enumerate(names)}
    return folder_splits(
        name, root, train_root, names, index.__getitem__, resize, resolution, samples_per_class, subset_seed
    )


def imagenet(
    root: str,
    name: str = "imagenet",
    train_root: str | None = None,
    resize: int = 256,
    resolution: int = 224,
    samples_per_class: int | None = 5,
    subset_seed: int = 0,
) -> DatasetSplits:
    """ImageNet-1k in the ILSVRC layout (`root/n01440764/*.JPEG`); labels are the canonical 1k indices,
    also when the tree holds only some of the 1000 synset folders."""
    info = ImageNetInfo()
    index = {wnid: i for i, wnid in enumerate(info.label_names())}

    def label_of(folder: str) -> int:
        if folder not in index:
            raise SatlabError(
                f"folder {folder!r} under the ImageNet root is not an ImageNet-1k synset id (like n01440764); "
                "point dataset.root at the validation folder with one sub-folder per synset, "
                "or use dataset=imagefolder for other trees"
            )
        return index[folder]

    return folder_splits(
        name,
        root,
        train_root,
        list(info.label_descriptions()),
        label_of,
        resize,
        resolution,
        samples_per_class,
        subset_seed,
    )
