"""The data stage: the real loaders, composed from conf/dataset/*.yaml with Hydra, on tiny trees in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Subset

from satlab.data import DatasetSplits, balanced_positions, labels_and_ids
from satlab.utils import SatlabError
from conftest import IMAGENET_INDICES, make_class_tree  # tests/ is on sys.path (pytest prepend mode)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def dataset_conf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root config holding only the `dataset` group, which Hydra finds in the real conf/ via searchpath.

    The project's own conf/config.yaml also pulls in groups (model_set, attack, ...) owned by other
    stages; this keeps these tests about the dataset yamls alone. `test_root_config_defaults_to_digits`
    covers the real root config.
    """
    conf = tmp_path_factory.mktemp("conf")
    (conf / "config.yaml").write_text(
        f"defaults:\n  - dataset: digits\n  - _self_\nhydra:\n  searchpath:\n    - file://{CONF_DIR}\n"
    )
    return conf


def compose_dataset(conf_dir: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
        return compose(config_name="config", overrides=list(overrides)).dataset


def load(conf_dir: Path, *overrides: str) -> DatasetSplits:
    """Instantiate like the CLI does: Hydra wraps errors raised by the target, so unwrap SatlabError."""
    try:
        return instantiate(compose_dataset(conf_dir, *overrides))
    except InstantiationException as exc:
        if isinstance(exc.__cause__, SatlabError):
            raise exc.__cause__ from None
        raise


def assert_8bit_images(x: torch.Tensor, resolution: int) -> None:
    assert x.dtype == torch.float32
    assert x.shape[-3:] == (3, resolution, resolution)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert torch.equal(torch.round(x * 255) / 255, x)


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits(dataset_conf_dir: Path) -> DatasetSplits:
    return load(dataset_conf_dir)  # dataset=digits is the default


def test_digits_shapes_range_and_8bit_levels(digits: DatasetSplits) -> None:
    assert isinstance(digits, DatasetSplits)
    assert (digits.name, digits.num_classes, digits.resolution) == ("digits", 10, 32)
    assert digits.class_names == [str(d) for d in range(10)]
    assert len(digits.eval) == 360 and len(digits.train) == 1437
    x, y, ids = next(iter(DataLoader(digits.eval, batch_size=16)))
    assert_8bit_images(x, 32)
    assert y.dtype == torch.long and ids.dtype == torch.long and y.shape == ids.shape == (16,)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert x.std() > 0.1  # real digit strokes, not a blank image


def test_digits_ids_are_stable_and_splits_disjoint(dataset_conf_dir: Path, digits: DatasetSplits) -> None:
    from sklearn.datasets import load_digits

    labels, ids = labels_and_ids(digits.eval)
    train_labels, train_ids = labels_and_ids(digits.train)
    assert not set(ids) & set(train_ids)
    assert sorted(set(ids) | set(train_ids)) == list(range(1797))
    target = load_digits().target
    assert np.array_equal(labels, target[ids]) and np.array_equal(train_labels, target[train_ids])
    image, label, sample_id = digits.eval[3]
    assert (label, sample_id) == (int(labels[3]), int(ids[3]))
    assert isinstance(label, int) and isinstance(sample_id, int)
    again = load(dataset_conf_dir)
    assert np.array_equal(labels_and_ids(again.eval)[1], ids)
    assert torch.equal(again.eval[3][0], image)


def test_digits_balanced_subset_is_deterministic_and_seed_independent(dataset_conf_dir: Path) -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    small = load(dataset_conf_dir, "dataset.samples_per_class=7", "dataset.resolution=16")
    torch.manual_seed(999)
    np.random.seed(999)
    same = load(dataset_conf_dir, "dataset.samples_per_class=7", "dataset.resolution=16")
    labels, ids = labels_and_ids(small.eval)
    assert np.bincount(labels).tolist() == [7] * 10
    assert np.array_equal(ids, labels_and_ids(same.eval)[1])
    assert np.all(np.diff(ids) > 0)  # kept in id order
    assert_8bit_images(small.eval[0][0], 16)
    other = load(dataset_conf_dir, "dataset.samples_per_class=7", "dataset.subset_seed=1")
    assert not np.array_equal(ids, labels_and_ids(other.eval)[1])


def test_balanced_positions_small_classes_keep_all() -> None:
    labels = np.array([0] * 10 + [1] * 2 + [2] * 5)
    pos = balanced_positions(labels, 4, subset_seed=0)
    assert np.bincount(labels[pos]).tolist() == [4, 2, 4]
    # a class's pick does not depend on which other classes are present
    alone = balanced_positions(labels[:10], 4, subset_seed=0)
    assert np.array_equal(pos[labels[pos] == 0], alone)
    assert np.array_equal(balanced_positions(labels, None), np.arange(len(labels)))


def test_labels_and_ids_through_torch_subset(digits: DatasetSplits) -> None:
    labels, ids = labels_and_ids(digits.eval)
    sub_labels, sub_ids = labels_and_ids(Subset(digits.eval, [5, 2]))
    assert sub_ids.tolist() == [ids[5], ids[2]] and sub_labels.tolist() == [labels[5], labels[2]]
    with pytest.raises(TypeError, match="satlab dataset"):
        labels_and_ids(torch.utils.data.TensorDataset(torch.zeros(2)))


# ---------------------------------------------------------------- image folders


def test_imagefolder_tree(dataset_conf_dir: Path, tiny_imagefolder: Path) -> None:
    splits = load(
        dataset_conf_dir,
        "dataset=imagefolder",
        f"dataset.root={tiny_imagefolder}",
        "dataset.resize=40",
        "dataset.resolution=32",
    )
    assert (splits.name, splits.num_classes, splits.class_names) == ("imagefolder", 3, ["cat", "dog", "fish"])
    assert splits.train is None and splits.resolution == 32
    labels, ids = labels_and_ids(splits.eval)
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2] and ids.tolist() == list(range(9))
    x, y, batch_ids = next(iter(DataLoader(splits.eval, batch_size=9)))
    assert_8bit_images(x, 32)
    assert y.tolist() == labels.tolist() and batch_ids.tolist() == ids.tolist()


def test_imagefolder_train_root_and_subset(dataset_conf_dir: Path, tiny_imagefolder: Path, tmp_path: Path) -> None:
    train_root = make_class_tree(tmp_path / "train", {"cat": ["t.png"], "dog": ["u.png"], "fish": []})
    splits = load(
        dataset_conf_dir,
        "dataset=imagefolder",
        f"dataset.root={tiny_imagefolder}",
        f"dataset.train_root={train_root}",
        "dataset.samples_per_class=2",
        "dataset.resize=24",
        "dataset.resolution=24",
    )
    labels, ids = labels_and_ids(splits.eval)
    assert np.bincount(labels).tolist() == [2, 2, 2]
    full_labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    assert np.array_equal(full_labels[ids], labels)  # ids index the full sorted file list
    assert labels_and_ids(splits.train)[0].tolist() == [0, 1]
    assert_8bit_images(splits.train[1][0], 24)


def test_imagenet_canonical_labels(dataset_conf_dir: Path, tiny_imagenet: Path) -> None:
    splits = load(
        dataset_conf_dir, "dataset=imagenet", f"dataset.root={tiny_imagenet}", "dataset.samples_per_class=2"
    )
    assert (splits.name, splits.num_classes, splits.resolution) == ("imagenet", 1000, 224)
    assert len(splits.class_names) == 1000 and splits.class_names[1].startswith("goldfish")
    labels, ids = labels_and_ids(splits.eval)
    assert sorted(set(labels.tolist())) == list(IMAGENET_INDICES)
    assert np.bincount(labels, minlength=1000)[list(IMAGENET_INDICES)].tolist() == [2, 2, 2]
    assert set(ids.tolist()) <= set(range(9))
    image, label, _ = splits.eval[len(splits.eval) - 1]
    assert label == 500
    assert_8bit_images(image, 224)


def test_flowers102(dataset_conf_dir: Path, tiny_flowers102: Path) -> None:
    base = ["dataset=flowers102", "dataset.resize=32", "dataset.resolution=32"]
    splits = load(dataset_conf_dir, *base, f"dataset.root={tiny_flowers102}")
    assert (splits.name, splits.num_classes, len(splits.class_names)) == ("flowers102", 102, 102)
    labels, ids = labels_and_ids(splits.eval)
    assert ids.tolist() == [2, 3, 6, 7, 10, 11]  # image numbers of tstid, minus 1
    assert labels.tolist() == [0, 0, 1, 1, 101, 101]
    assert labels_and_ids(splits.train)[1].tolist() == [0, 4, 8]
    assert_8bit_images(splits.eval[0][0], 32)
    # root may also point at flowers-102/ itself; split=val picks `valid`
    val = load(dataset_conf_dir, *base, f"dataset.root={tiny_flowers102 / 'flowers-102'}", "dataset.split=val")
    assert labels_and_ids(val.eval)[1].tolist() == [1, 5, 9]
    one = load(dataset_conf_dir, *base, f"dataset.root={tiny_flowers102}", "dataset.samples_per_class=1")
    assert labels_and_ids(one.eval)[0].tolist() == [0, 1, 101]


# ---------------------------------------------------------------- bad input


def test_missing_root(dataset_conf_dir: Path, tmp_path: Path) -> None:
    for group in ("imagefolder", "imagenet", "flowers102"):
        with pytest.raises(SatlabError, match=r"dataset\.root .*nowhere.*is not an existing directory"):
            load(dataset_conf_dir, f"dataset={group}", f"dataset.root={tmp_path / 'nowhere'}")


def test_missing_flowers_file_is_named(dataset_conf_dir: Path, tiny_flowers102: Path) -> None:
    (tiny_flowers102 / "flowers-102" / "setid.mat").unlink()
    with pytest.raises(SatlabError, match=r"setid\.mat.*robots\.ox\.ac\.uk.*download=True"):
        load(dataset_conf_dir, "dataset=flowers102", f"dataset.root={tiny_flowers102}")


def test_missing_flowers_image_is_named(dataset_conf_dir: Path, tiny_flowers102: Path) -> None:
    (tiny_flowers102 / "flowers-102" / "jpg" / "image_00007.jpg").unlink()
    with pytest.raises(SatlabError, match=r"image_00007\.jpg"):
        load(dataset_conf_dir, "dataset=flowers102", f"dataset.root={tiny_flowers102}")


def test_bad_flowers_split(dataset_conf_dir: Path, tiny_flowers102: Path) -> None:
    with pytest.raises(SatlabError, match=r"dataset\.split must be one of"):
        load(dataset_conf_dir, "dataset=flowers102", f"dataset.root={tiny_flowers102}", "dataset.split=dev")


def test_unknown_wnid_folder(dataset_conf_dir: Path, tiny_imagenet: Path) -> None:
    make_class_tree(tiny_imagenet, {"not_a_synset": ["a.jpg"]})
    with pytest.raises(SatlabError, match=r"'not_a_synset'.*not an ImageNet-1k synset"):
        load(dataset_conf_dir, "dataset=imagenet", f"dataset.root={tiny_imagenet}")


def test_empty_trees(dataset_conf_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.txt").write_text("")
    with pytest.raises(SatlabError, match="no class sub-folders"):
        load(dataset_conf_dir, "dataset=imagefolder", f"dataset.root={tmp_path / 'flat'}")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "readme.md").write_text("")
    with pytest.raises(SatlabError, match="no images found"):
        load(dataset_conf_dir, "dataset=imagefolder", f"dataset.root={tmp_path / 'empty'}")


def test_mismatched_train_root(dataset_conf_dir: Path, tiny_imagefolder: Path, tmp_path: Path) -> None:
    train_root = make_class_tree(tmp_path / "train", {"cat": ["a.png"], "horse": ["b.png"]})
    with pytest.raises(SatlabError, match="same class folders.*horse"):
        load(
            dataset_conf_dir,
            "dataset=imagefolder",
            f"dataset.root={tiny_imagefolder}",
            f"dataset.train_root={train_root}",
        )


def test_bad_parameters(dataset_conf_dir: Path, tiny_imagefolder: Path) -> None:
    with pytest.raises(SatlabError, match=r"samples_per_class must be a positive integer or null .*, got 0"):
        load(dataset_conf_dir, "dataset.samples_per_class=0")
    with pytest.raises(SatlabError, match=r"subset_seed must be a non-negative integer, got -1"):
        load(dataset_conf_dir, "dataset.samples_per_class=3", "dataset.subset_seed=-1")
    with pytest.raises(SatlabError, match=r"resolution must be a positive integer"):
        load(dataset_conf_dir, "dataset.resolution=0")
    with pytest.raises(SatlabError, match=r"resize \(16\) must be >= dataset\.resolution \(32\)"):
        load(
            dataset_conf_dir,
            "dataset=imagefolder",
            f"dataset.root={tiny_imagefolder}",
            "dataset.resize=16",
            "dataset.resolution=32",
        )


def test_unreadable_image(dataset_conf_dir: Path, tiny_imagefolder: Path) -> None:
    (tiny_imagefolder / "dog" / "x.webp").write_bytes(b"not really an image")
    splits = load(dataset_conf_dir, "dataset=imagefolder", f"dataset.root={tiny_imagefolder}")
    with pytest.raises(SatlabError, match=r"cannot read image .*x\.webp"):
        splits.eval[4]


def test_root_config_defaults_to_digits() -> None:
    """The project's root config picks dataset=digits (needs every group's default yaml to exist)."""
    try:
        cfg = compose_dataset(CONF_DIR)
    except MissingConfigException as exc:  # another stage's group is not written yet
        if "dataset/" in str(exc):
            raise
        pytest.skip(f"root config not composable yet: {str(exc).splitlines()[0]}")
    assert cfg._target_ == "satlab.data.digits.digits" and cfg.samples_per_class is None
