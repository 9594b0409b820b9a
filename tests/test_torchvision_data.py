"""dataset=torchvision: the three layouts satlab reads itself (torchvision's IDX folder, a flat folder of IDX files
like Debian's, CIFAR's pickle batches) on tiny files written here, a torchvision class read through torchvision,
the one-line errors, and one run on the real Fashion-MNIST when Debian's package is installed."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from PIL import Image
from torchvision.datasets.utils import verify_str_arg

from satlab.data import data_fingerprint, labels_and_ids
from satlab.data.torchvision_files import read_idx
from satlab.data.torchvision_sets import FittedImages, VisionImages, torchvision_dataset
from satlab.utils import SatlabError
from test_bad_input import run_cli
from test_data import CONF_DIR, assert_8bit_images, load

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
PER_CLASS = {"train": 3, "test": 2}  # images per class in the tiny files


@pytest.fixture(scope="module")
def conf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root config holding only the dataset group (as tests/test_data.py's)."""
    conf = tmp_path_factory.mktemp("conf")
    (conf / "config.yaml").write_text(
        f"defaults:\n  - dataset: torchvision\n  - _self_\nhydra:\n  searchpath:\n    - file://{CONF_DIR}\n")
    return conf


def write_idx(path: Path, array: np.ndarray) -> Path:
    """`array` (uint8, 1-3 dims) as an IDX file; gzipped when `path` ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(header + array.astype(np.uint8).tobytes())
    return path


def tiny_mnist(split: str, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Seeded grey images uint8 [N,28,28] (N = PER_CLASS[split] x classes) and labels [N], classes interleaved."""
    n = PER_CLASS[split] * classes
    rng = np.random.default_rng(0 if split == "train" else 1)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % classes


def make_idx_files(folder: Path, gz: bool) -> Path:
    """The four MNIST-style IDX files of `tiny_mnist` in `folder` (gzipped or not)."""
    suffix = ".gz" if gz else ""
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = tiny_mnist(split)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return folder


def make_cifar10(root: Path) -> tuple[Path, np.ndarray]:
    """torchvision's CIFAR-10 layout (root/cifar-10-batches-py: 5 train batches, test_batch, batches.meta) with
    2 images per class in each batch; returns root and the test images uint8 [20,3,32,32]."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    test = None
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(20, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": [k % 10 for k in range(20)]}, fh, protocol=2)
        test = data.reshape(-1, 3, 32, 32)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names}, fh, protocol=2)
    return root, test


# ---------------------------------------------------------------- the IDX layouts


def test_torchvision_idx_layout(conf_dir: Path, tmp_path: Path) -> None:
    """<root>/FashionMNIST/raw/*-ubyte: grey to 3 equal channels, 28 -> 32, class names, balanced seeded subsets."""
    make_idx_files(tmp_path / "FashionMNIST" / "raw", gz=False)
    data = load(conf_dir, "dataset.name=FashionMNIST", f"dataset.root={tmp_path}", "dataset.samples_per_class=1",
                "dataset.train_per_class=2")
    assert data.name == "FashionMNIST" and data.num_classes == 10 and data.resolution == 32
    assert data.class_names == list(tvd.FashionMNIST.classes)
    x, label, sample_id = data.eval[0]
    assert_8bit_images(x, 32)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey repeated
    labels, ids = labels_and_ids(data.eval)
    assert sorted(labels) == list(range(10))  # one per class
    _, test_labels = tiny_mnist("test")
    assert (test_labels[ids] == labels).all()  # sample id = position in the test split
    train_labels, train_ids = labels_and_ids(data.train)
    assert np.bincount(train_labels).tolist() == [2] * 10 and len(set(train_ids)) == 20
    again = load(conf_dir, "dataset.name=FashionMNIST", f"dataset.root={tmp_path}", "dataset.samples_per_class=1",
                 "dataset.train_per_class=2")
    assert data_fingerprint(again.eval) == data_fingerprint(data.eval)
    other = load(conf_dir, "dataset.name=FashionMNIST", f"dataset.root={tmp_path}", "dataset.samples_per_class=1",
                 "dataset.subset_seed=1")
    assert not np.array_equal(labels_and_ids(other.eval)[1], ids)  # another seed, another subset
    assert len(other.train) == 30  # train_per_class null: the whole split


def test_flat_gz_folder_equals_torchvision_layout(tmp_path: Path) -> None:
    """A flat folder of gzipped IDX files (Debian's layout) reads the same pixels as torchvision's layout; at the
    native 28 px nothing is resampled."""
    make_idx_files(tmp_path / "tv" / "KMNIST" / "raw", gz=False)
    make_idx_files(tmp_path / "flat", gz=True)
    via_tv = torchvision_dataset(str(tmp_path / "tv"), "KMNIST", samples_per_class=None, resolution=28)
    flat = torchvision_dataset(str(tmp_path / "flat"), "KMNIST", samples_per_class=None, resolution=28)
    assert isinstance(flat.eval, FittedImages) and flat.class_names == list(tvd.KMNIST.classes)
    assert data_fingerprint(flat.eval) == data_fingerprint(via_tv.eval)
    assert data_fingerprint(flat.train) == data_fingerprint(via_tv.train)
    images, _ = tiny_mnist("test")
    assert torch.equal(flat.eval.images[:, 0], torch.from_numpy(images))  # untouched pixels
    assert data_fingerprint(flat.eval) != data_fingerprint(
        torchvision_dataset(str(tmp_path / "flat"), "KMNIST", samples_per_class=None).eval)  # 28 vs 32 px


def test_fitting_is_lazy_and_train_split_optional(tmp_path: Path) -> None:
    make_idx_files(tmp_path, gz=True)
    data = torchvision_dataset(str(tmp_path), "MNIST", samples_per_class=2)
    assert data.train._fitted is None  # a task=sat run never resizes the train split
    assert data.train.images.shape == (30, 3, 32, 32) and data.train._fitted is not None
    assert torchvision_dataset(str(tmp_path), "MNIST", train_split=None).train is None
    assert len(torchvision_dataset(str(tmp_path), "MNIST", train_per_class=0).train) == 0
    swapped = torchvision_dataset(str(tmp_path), "MNIST", split="train", train_split="test", samples_per_class=None)
    assert len(swapped.eval) == 30 and len(swapped.train) == 20


def test_gz_damaged_near_its_start_names_the_file(tmp_path: Path) -> None:
    """A gzipped IDX file damaged just after its header (zlib's "Error -3 while decompressing data", not an
    OSError): one line naming the file and what to do."""
    folder = make_idx_files(tmp_path, gz=True)
    damaged = folder / "t10k-images-idx3-ubyte.gz"
    data = bytearray(damaged.read_bytes())
    data[34:42] = b"\x00\xff" * 4
    damaged.write_bytes(bytes(data))
    with pytest.raises(SatlabError) as err:
        torchvision_dataset(str(tmp_path), "FashionMNIST")
    assert str(err.value) == (f"cannot read {damaged}: Error -3 while decompressing data: invalid stored block "
                              "lengths; the file is damaged: replace it with an intact copy")


def test_idx_labels_outside_the_class_count_are_refused(tmp_path: Path) -> None:
    """Test labels with 50 bytes set to 200 (a damaged file): refused naming the file and the values, instead of
    running with 201 classes named '0'..'200'."""
    folder = make_idx_files(tmp_path, gz=False)
    _, labels = tiny_mnist("test")
    labels[:5] = 200
    labels[5] = 17
    bad = write_idx(folder / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(SatlabError) as err:
        torchvision_dataset(str(tmp_path), "FashionMNIST")
    assert str(err.value) == (f"{bad}: 6 label(s) outside 0..9 (FashionMNIST has 10 classes): 17, 200; the file is "
                              "damaged or not FashionMNIST's, replace it")


# ---------------------------------------------------------------- CIFAR's pickles


def test_cifar10_pickle_layout(conf_dir: Path, tmp_path: Path) -> None:
    root, test = make_cifar10(tmp_path)
    data = load(conf_dir, "dataset.name=CIFAR10", f"dataset.root={root}", "dataset.samples_per_class=null")
    assert data.class_names[:2] == ["airplane", "automobile"] and data.num_classes == 10
    assert len(data.train) == 100 and len(data.eval) == 20
    assert torch.equal(data.eval.images, torch.from_numpy(test))  # 32 px RGB: the pickled bytes, untouched
    small = torchvision_dataset(str(root / "cifar-10-batches-py"), "CIFAR10", resolution=16, samples_per_class=1)
    assert_8bit_images(small.eval[0][0], 16)  # the batches folder itself as root, downsampled
    assert len(small.eval) == 10


def test_cifar_labels_outside_the_class_count_are_refused(tmp_path: Path) -> None:
    root, _ = make_cifar10(tmp_path)
    batch = root / "cifar-10-batches-py" / "test_batch"
    entry = pickle.loads(batch.read_bytes())
    entry["labels"][3] = 12
    batch.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(SatlabError, match=r"the test batches in .*cifar-10-batches-py: 1 label\(s\) outside 0..9 "
                                          r"\(CIFAR10 has 10 classes\): 12; the file is damaged"):
        torchvision_dataset(str(root), "CIFAR10")


# ---------------------------------------------------------------- a class torchvision reads


class TinyPhotos(tvd.VisionDataset):
    """A stand-in torchvision classification class: RGB photos of 40 x 24 px, splits train/val, `_labels`."""

    classes = ["red", "green", "blue"]

    def __init__(self, root, split="train", transform=None, target_transform=None, download=False, shade=40):
        super().__init__(root, transform=transform, target_transform=target_transform)
        self.shade = shade
        self.split = verify_str_arg(split, "split", ("train", "val"))
        if not (Path(root) / "tiny_photos").is_dir():
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
        self._labels = [k % 3 for k in range(9 if split == "train" else 6)]

    def __len__(self):
        return len(self._labels)

    def __getitem__(self, i):
        pixels = np.zeros((24, 40, 3), dtype=np.uint8)
        pixels[..., self._labels[i]] = self.shade * (i + 1)
        return Image.fromarray(pixels), self._labels[i]


@pytest.fixture
def tiny_photos(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """TinyPhotos registered as torchvision.datasets.TinyPhotos; its root."""
    monkeypatch.setattr(tvd, "TinyPhotos", TinyPhotos, raising=False)
    monkeypatch.setattr(tvd, "__all__", (*tvd.__all__, "TinyPhotos"))
    (tmp_path / "tiny_photos").mkdir()
    return tmp_path


def test_other_classes_go_through_torchvision(tiny_photos: Path) -> None:
    data = torchvision_dataset(str(tiny_photos), "TinyPhotos", split="val", samples_per_class=None, resolution=16)
    assert isinstance(data.eval, VisionImages) and data.class_names == TinyPhotos.classes
    x, label, sample_id = data.eval[4]
    assert_8bit_images(x, 16)  # 40 x 24 -> shorter side 16, center crop 16 x 16
    assert label == 1 and sample_id == 4 and x[1].max() == pytest.approx(200 / 255) and x[0].max() == 0
    assert len(data.train) == 9 and len(data_fingerprint(data.eval)) == 16
    with pytest.raises(SatlabError, match=r"dataset.split='test': torchvision.datasets."
                                          r"TinyPhotos says: Unknown value 'test' for argument split"):
        torchvision_dataset(str(tiny_photos), "TinyPhotos")
    (tiny_photos / "tiny_photos").rmdir()
    with pytest.raises(SatlabError, match="TinyPhotos found no usable val split under .*Dataset not found"):
        torchvision_dataset(str(tiny_photos), "TinyPhotos", split="val")


@pytest.mark.parametrize("override", ["dataset.kwargs={shade: 20}", "+dataset.kwargs={shade: 20}",
                                      "++dataset.kwargs.shade=20"])
def test_kwargs_override_as_documented(override: str, conf_dir: Path, tiny_photos: Path) -> None:
    """`'dataset.kwargs={split: balanced}'` (docs/datasets.md, the EMNIST hint) composes: kwargs defaults to null, so
    the plain form sets it (an empty mapping would refuse every key in Hydra's struct mode); `+`/`++` work too."""
    data = load(conf_dir, "dataset.name=TinyPhotos", f"dataset.root={tiny_photos}", "dataset.split=val",
                "dataset.samples_per_class=null", "dataset.resolution=16", override)
    assert data.eval[4][0][1].max() == pytest.approx(100 / 255)  # shade 20 x 5, not the default 40 x 5
    assert load(conf_dir, "dataset.name=TinyPhotos", f"dataset.root={tiny_photos}", "dataset.split=val",
                "dataset.samples_per_class=null", "dataset.resolution=16").eval[4][0][1].max() == \
        pytest.approx(200 / 255)


# ---------------------------------------------------------------- download only when asked


def test_download_only_when_asked_and_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []

    def fake_download(self):  # what torchvision's download leaves: the uncompressed files in raw/
        calls.append(self.raw_folder)
        make_idx_files(Path(self.raw_folder), gz=False)

    monkeypatch.setattr(tvd.FashionMNIST, "download", fake_download)
    with pytest.raises(SatlabError, match=r"no FashionMNIST test files under .*: expected t10k-images-idx3-ubyte"
                                          r"\[.gz\] and t10k-labels-idx1-ubyte\[.gz\] in .*dataset.download=true"):
        torchvision_dataset(str(tmp_path), "FashionMNIST")
    assert calls == []
    data = torchvision_dataset(str(tmp_path / "new"), "FashionMNIST", download=True)
    assert calls == [str(tmp_path / "new" / "FashionMNIST" / "raw")]  # the test split's call fetched all four
    assert len(data.eval) == 20 and len(data.train) == 30
    torchvision_dataset(str(tmp_path / "new"), "FashionMNIST", download=True)
    assert len(calls) == 1  # files there: nothing downloaded


# ---------------------------------------------------------------- mistakes


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "FashionMnist"}, "dataset.name=FashionMnist is not a torchvision dataset class; did you mean "
                               "FashionMNIST?"),
    ({"name": "torchvision"}, "dataset=torchvision needs the class: add dataset.name="),
    ({"name": "CocoDetection"}, "torchvision.datasets.CocoDetection is not a single-label image classification"),
    ({"name": "ImageFolder"}, "use dataset=imagefolder"),
    ({"name": "EuroSAT"}, "torchvision.datasets.EuroSAT has no train/test splits .*use dataset=imagefolder"),
    ({"name": "MNIST", "split": "val"}, "dataset.split='val': MNIST has the splits train, test"),
    ({"name": "MNIST", "train_split": "extra"}, "dataset.train_split='extra': MNIST has the splits train, test"),
    ({"name": "MNIST", "train_per_class": -1}, "dataset.train_per_class must be null"),
    ({"name": "MNIST", "download": "yes"}, "dataset.download must be true or false"),
    ({"name": "MNIST", "kwargs": {"train": True}}, "dataset.kwargs sets train, which satlab sets itself"),
    ({"name": "CIFAR10"}, r"no CIFAR10 test files under .*: expected cifar-10-batches-py/ with test_batch"),
])
def test_one_line_errors(kwargs: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(SatlabError, match=message) as caught:
        torchvision_dataset(str(tmp_path), **kwargs)
    assert "\n" not in str(caught.value)


def test_missing_root_and_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(SatlabError, match=r"dataset.root '/no/such' is not an existing directory; set it to the "
                                          r"folder holding MNIST's files"):
        torchvision_dataset("/no/such", "MNIST")
    make_idx_files(tmp_path, gz=False)
    data = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(data[:-5])
    with pytest.raises(SatlabError, match="the file is truncated or corrupt: replace it"):
        torchvision_dataset(str(tmp_path), "MNIST")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(SatlabError, match="is not an IDX file of unsigned bytes"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte")


# ---------------------------------------------------------------- the real Fashion-MNIST (Debian's package)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(),
                    reason=f"{DEBIAN_FASHION} missing: apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_sat_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    run_dir = tmp_path / "run"
    code, out, err = run_cli(["dataset=torchvision", "dataset.name=FashionMNIST", f"dataset.root={DEBIAN_FASHION}",
                              "model_set=timm_tiny", "model_set.models=[test_resnet,test_vit]",
                              "dataset.samples_per_class=2", "attack=fgsm", "logger=none",
                              "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "sat.n_bootstrap=0",
                              f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}"], monkeypatch, capsys)
    assert code == 0, err[-2000:]
    lines = (run_dir / "sat_matrix.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].split(",")[1:] == ["test_resnet", "test_vit"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["samples"] == 20 and summary["config"]["dataset"]["name"] == "FashionMNIST"
