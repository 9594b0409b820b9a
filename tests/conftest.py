"""Shared fixtures: tiny dataset trees written to tmp_path (random small images of varied sizes)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from timm.data import ImageNetInfo

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest worker per core (pytest-xdist): two workers each running several intra-op
    # threads on 2 cores fight for them and run several times slower. One thread each, also in the CLI
    # subprocesses the tests start (they inherit OMP_NUM_THREADS).
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

IMAGENET_INDICES = (0, 1, 500)  # canonical ImageNet-1k labels of the tiny ImageNet tree's folders


def write_image(path: Path, rng: np.random.Generator) -> None:
    """A random RGB image of a random size between 24 and 72 pixels a side (format from the suffix)."""
    height, width = rng.integers(24, 73, size=2)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_class_tree(root: Path, files: dict[str, list[str]], seed: int = 0) -> Path:
    """root/<class>/<file> for each class and file name given."""
    rng = np.random.default_rng(seed)
    for cls, names in files.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for name in names:
            write_image(root / cls / name, rng)
    return root


def make_imagefolder(root: Path) -> Path:
    """3 classes (cat 4 images, dog 3, fish 2) mixing jpg/png/JPEG/bmp/webp; plus files that must be skipped."""
    make_class_tree(
        root,
        {
            "cat": ["a.jpg", "b.png", "c.JPEG", "d.bmp"],
            "dog": ["x.webp", "y.jpeg", "z.PNG"],
            "fish": ["1.jpg", "2.jpg"],
        },
    )
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / "._x.webp").write_bytes(b"macOS metadata, not an image")
    return root


def make_imagenet(root: Path) -> Path:
    """ILSVRC-style val tree with the synsets of IMAGENET_INDICES, 3 JPEGs each."""
    wnids = ImageNetInfo().label_names()
    files = {wnids[i]: [f"ILSVRC2012_val_{i:08d}_{k}.JPEG" for k in range(3)] for i in IMAGENET_INDICES}
    return make_class_tree(root, files)


def make_flowers102(root: Path) -> Path:
    """torchvision's Flowers-102 layout with 12 images of 3 classes (labels 1, 2, 102) and all three splits."""
    base = root / "flowers-102"
    rng = np.random.default_rng(1)
    labels = np.array([1, 1, 1, 1, 2, 2, 2, 2, 102, 102, 102, 102], dtype=np.float64)  # .mat files store doubles
    for number in range(1, len(labels) + 1):
        write_image(base / "jpg" / f"image_{number:05d}.jpg", rng)
    savemat(base / "imagelabels.mat", {"labels": labels.reshape(1, -1)})
    setid = {"trnid": [1, 5, 9], "valid": [2, 6, 10], "tstid": [3, 4, 7, 8, 11, 12]}
    savemat(base / "setid.mat", {k: np.array(v, dtype=np.float64).reshape(1, -1) for k, v in setid.items()})
    return root


@pytest.fixture
def tiny_imagefolder(tmp_path: Path) -> Path:
    """Root of a tiny class-folder tree (classes cat/dog/fish -> labels 0/1/2, 9 images)."""
    return make_imagefolder(tmp_path / "imagefolder")


@pytest.fixture
def tiny_imagenet(tmp_path: Path) -> Path:
    """Root of a tiny ImageNet val tree (synsets with canonical labels 0, 1, 500; 3 images each)."""
    return make_imagenet(tmp_path / "imagenet_val")


@pytest.fixture
def tiny_flowers102(tmp_path: Path) -> Path:
    """Parent folder of a tiny `flowers-102/` tree (train 3, val 3, test 6 images)."""
    return make_flowers102(tmp_path / "flowers")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on 2 shared cores, two threads fighting other processes can be ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class CliResult:
    """What `satlab <args>` ended with: like subprocess.CompletedProcess (returncode, stdout, stderr)."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def satlab_in_process(monkeypatch, capsys):
    """`satlab <args>` run in this process (no interpreter start and imports: seconds saved per call), in `cwd`,
    with `env` set for the call: returns a CliResult. For what needs a real process (concurrency, installs,
    launchers that pickle the job), the tests start one themselves."""

    def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> CliResult:
        from satlab import cli

        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["satlab"])
        monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # main() sets it; restored after the test
        monkeypatch.setenv("WANDB_MODE", "offline")
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        try:
            cli.main(list(args))
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run
