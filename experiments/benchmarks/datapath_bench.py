"""The data path of a map, today's way against decoding once (`make bench-data`; section (f) of `make bench`).

On a generated tree of ImageNet-sized JPEGs (500x375, natural-looking content: smooth gradients, soft shapes and
fine texture, about 70 KB each), a map of small timm models at 224 px (random init, 2 classes, so about half of the
images are in each X_AB), side by side in one run:

- today's path: every pass decodes the JPEGs again, on the main process (`sat.num_workers=0`; the dataset wrapped
  in a torch Subset, which the decode-once pass does not take, so it runs exactly as before);
- the new path with the default settings: one parallel decode during the fingerprint pass, kept in the cache,
  uint8 batches converted on the device;

with their wall time, decodes per image per map (counted by `satlab.data.common.DECODES`), the share of the engine's
time spent waiting for data (the decode pass plus the loader waits, `Job.data_path`) and whether the records are
bitwise equal; then a second run of the new path (decodes nothing) and the measured decode rate per core (1 and
all threads), which `scale_bench.py` (e) uses for its wall-time estimate.

    python experiments/benchmarks/datapath_bench.py                       # 1,000 images, 2 models (~10 min, 2 cores)
    python experiments/benchmarks/datapath_bench.py --images 40 --models test_resnet --steps 1   # the code path
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)
MODELS = ["test_vit", "test_convnext"]  # the fastest of timm's test_* models at 224 px on a CPU
SIZE = (500, 375)  # ImageNet's most common validation size (width, height)


def natural_image(rng: np.random.Generator, size: tuple[int, int] = SIZE) -> np.ndarray:
    """uint8 [H,W,3]: a smooth two-colour gradient, a few soft-edged ellipses and 1/f-like texture (noise upsampled
    from coarse grids, amplitude falling with frequency): smooth regions and edges like a photo, not noise."""
    import torch
    import torch.nn.functional as F
    from PIL import Image, ImageFilter

    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (np.cos(rng.uniform(0, np.pi)) * xx / w + np.sin(rng.uniform(0, np.pi)) * yy / h)[..., None]
    img = a * (1 - t) + b * t
    for _ in range(rng.integers(2, 6)):
        cx, cy, rx, ry = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, w / 3), rng.uniform(20, h / 3)
        inside = np.clip(1.5 - np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2), 0, 1) * 2
        img = img * (1 - np.clip(inside, 0, 1)[..., None]) + rng.uniform(0, 255, 3) * np.clip(inside, 0, 1)[..., None]
    for cell, amp in ((64, 24.0), (16, 14.0), (4, 10.0), (2, 6.0)):  # smooth (bicubic) noise at four scales
        coarse = torch.from_numpy(rng.normal(0, amp, (1, 3, h // cell + 2, w // cell + 2)).astype(np.float32))
        fine = F.interpolate(coarse, scale_factor=cell, mode="bicubic", align_corners=False)
        img += fine[0, :, :h, :w].permute(1, 2, 0).numpy()
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7))
    return np.asarray(out)


def jpeg_tree(root: Path, images: int, classes: int = 2, seed: int = 0) -> Path:
    """`images` JPEGs (quality 95) in `classes` class folders under root; kept when already there."""
    from PIL import Image

    done = root / f".done-{images}-{classes}-{seed}"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    for k in range(images):
        folder = root / f"class{k % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(natural_image(rng)).save(folder / f"img{k:05d}.jpg", quality=95)
    done.touch()
    return root


def decode_rate(data, threads: int, count: int = 200) -> float:
    """Images per second that `threads` threads decode (JPEG -> resize -> crop -> uint8), the first `count` images."""
    count = min(count, len(data))
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(data.decode, range(count)))
    return count / (time.perf_counter() - start)


def small_decode_rate(images: int = 64) -> float:
    """The decode rate per core (images/s, one thread) on `images` generated JPEGs in a temporary folder."""
    from satlab.data.folders import imagefolder

    with tempfile.TemporaryDirectory() as folder:
        root = jpeg_tree(Path(folder), images)
        return decode_rate(imagefolder(str(root), resize=256, resolution=224).eval, 1, images)


def one_map(models, data, attack, device: str, cache: Path | None, workers: int | None, batch: int) -> dict:
    """One engine run; wall time, decodes per image, the waiting share and the records."""
    from satlab.data import data_fingerprint
    from satlab.data.common import DECODES
    from satlab.sat.engine import compute_records

    trainer = {"accelerator": "gpu" if device == "cuda" else "cpu", "enable_progress_bar": False}
    n = len(data)
    start, decodes = time.perf_counter(), DECODES.value
    fingerprint_s = 0.0
    if workers == 0:  # today's path: its fingerprint pass decodes once more, in this process (timed as waiting)
        data_fingerprint(data)
        fingerprint_s = time.perf_counter() - start
    result = compute_records(models, data, attack, batch_size=batch, num_workers=workers, cache_dir=cache,
                             trainer_cfg=trainer)
    wall = time.perf_counter() - start
    path = result.data_path
    waited = path["total"]["waiting_for_data_s"] + fingerprint_s
    return {"wall": wall, "decodes": (DECODES.value - decodes) / n, "waiting": waited / wall, "records": result.records,
            "path": path}


def section_data_path(images: int, archs: list[str], steps: int, device: str = "cpu", batch: int = 64,
                      tree: Path | None = None) -> dict:
    """Print the data-path comparison (module docstring). Returns {"rate": the decode rate per core (images/s),
    "today", "new": `one_map`'s results}. An architecture listed twice is two models (named `<arch>_<k>`)."""
    from torch.utils.data import Subset

    from satlab.attacks import create_attack
    from satlab.data import data_fingerprint
    from satlab.data.common import DECODES
    from satlab.data.folders import imagefolder
    from satlab.data.pixels import default_workers
    from satlab.models import ModelSet, TimmSource
    from satlab.models.specs import ModelSpec

    root = jpeg_tree(tree or Path(tempfile.gettempdir()) / f"satlab-bench-jpegs-{images}", images)
    files = sorted(root.rglob("*.jpg"))[:images]
    kb = np.mean([f.stat().st_size for f in files]) / 1024
    cores = default_workers()

    def fresh():
        return imagefolder(str(root), resize=256, resolution=224).eval

    def model_set():
        names = [a if archs.count(a) == 1 else f"{a}_{k}" for k, a in enumerate(archs)]
        return ModelSet([TimmSource(ModelSpec(n, a, pretrained=False, input_size=224), 2, 224)
                         for n, a in zip(names, archs)])

    one, every = decode_rate(fresh(), 1), decode_rate(fresh(), cores)
    attack = create_attack("pgd_linf", eps=4 / 255, steps=steps)
    print(f"## (f) the data path: decode once per map\n\n{len(fresh())} JPEGs of {SIZE[0]}x{SIZE[1]} (mean {kb:.0f} "
          f"KB; gradients, soft shapes, texture), resized to 256 and center-cropped to 224; a map of {len(archs)} "
          f"timm models ({', '.join(archs)}; random init, 2 classes) at 224 px, PGD-Linf {steps} step(s), batch "
          f"{batch}, on {device} with {cores} core(s) available (other processes may share them).\n")
    warm = Subset(fresh(), range(min(16, len(files))))  # one-time costs (kernels, allocator): not timed
    one_map(model_set(), warm, attack, device, None, 0, batch)
    today = one_map(model_set(), Subset(fresh(), range(len(fresh()))), attack, device, None, 0, batch)
    with tempfile.TemporaryDirectory() as cache:
        new = one_map(model_set(), fresh(), attack, device, Path(cache), None, batch)
        start, decodes = time.perf_counter(), DECODES.value
        data_fingerprint(fresh(), None, cache)  # a second run / tile / task=ensemble on the same files
        again_s, again = time.perf_counter() - start, DECODES.value - decodes
    same = all(np.array_equal(getattr(today["records"], f), getattr(new["records"], f))
               for f in ("correct", "fooled", "sample_ids", "labels"))
    print("| | today's path (a decode per pass, main process) | decode once (default settings) | ratio |")
    print("|---|---|---|---|")
    print(f"| wall time of the map | {today['wall']:.1f} s | {new['wall']:.1f} s | "
          f"{today['wall'] / new['wall']:.2f}x faster |")
    print(f"| decodes per image per map (counted) | {today['decodes']:.2f} | {new['decodes']:.2f} | |")
    print(f"| share of the engine's time waiting for data (decode pass + loader waits) | "
          f"{today['waiting']:.1%} | {new['waiting']:.1%} | |")
    for kind in ("attack", "evaluate"):
        cells = [p["path"].get(kind, {}) for p in (today, new)]
        print(f"| {kind}: waiting / host-to-device / models (s) | "
              + " | ".join(f"{c.get('wait_s', 0):.1f} / {c.get('transfer_s', 0):.2f} / {c.get('compute_s', 0):.1f}"
                           for c in cells) + " | |")
    print(f"\nRecords bitwise equal: {same}. A second run on the same files (or a tile, or task=ensemble) decoded "
          f"{again} image(s) and read the pixels back, checked, in {again_s:.1f} s.\n")
    print(f"Decode rate (JPEG -> RGB -> resize 256 -> crop 224 -> uint8, Pillow {__import__('PIL').__version__}): "
          f"{one:.0f} images/s on 1 thread, {every:.0f} images/s on {cores} threads "
          f"({every / one:.2f}x; the machine may be shared).\n")
    return {"rate": one, "today": today, "new": new}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tree", help="where the generated JPEGs are kept (default: <temp dir>/satlab-bench-jpegs-N)")
    args = parser.parse_args()
    import torch

    print(f"# satlab data-path benchmark ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU core(s), torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s))\n")
    section_data_path(args.images, args.models.split(","), args.steps, args.device, args.batch,
                      Path(args.tree) if args.tree else None)


if __name__ == "__main__":
    main()
