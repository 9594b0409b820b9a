"""Shapes: an embedded second dataset, drawn procedurally offline (no download), 10 classes of shapes.

Each image is one shape (circle, ring, square, frame, triangle, diamond, hexagon, star, plus, crescent) at a
random position, size and rotation, over a background of one random colour carrying a faint random texture
(stripes, checks or blocky noise). The shape's colour is random too, but at least `MIN_CONTRAST` away from the
background in luminance, so the class is always visible. Drawn at 4x the resolution with PIL and downsampled
(antialiased) to 8-bit RGB. Image k of class c is drawn from its own generator seeded by (seed, c, k): the set
never depends on order. The classification task (shape, regardless of colour, texture, pose) differs from
digits' handwriting.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw

from satlab.data.common import DatasetSplits, TensorImages, balanced_subset, check_params
from satlab.utils import SatlabError

CLASSES = ("circle", "ring", "square", "frame", "triangle", "diamond", "hexagon", "star", "plus", "crescent")
SUPERSAMPLE = 4
MIN_CONTRAST = 0.3  # luminance gap between shape and background colours
TEXTURE = 24.0  # the background texture's amplitude, in 8-bit levels per channel


def polygon(cx: float, cy: float, r: float, n: int, angle: float, inner: float | None = None) -> list[tuple]:
    """Vertices of a regular n-gon (or an n-pointed star when `inner` is the inner radius ratio)."""
    pts = []
    steps = 2 * n if inner else n
    for k in range(steps):
        rad = r * (inner if inner and k % 2 else 1.0)
        a = angle + 2 * math.pi * k / steps
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def luminance(rgb: np.ndarray) -> float:
    """Relative luminance in [0, 1] of an RGB triple in 0-255 (Rec. 601 weights)."""
    return float(np.dot(rgb, (0.299, 0.587, 0.114)) / 255)


def colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A background colour and a shape colour at least MIN_CONTRAST apart in luminance."""
    background = rng.integers(0, 256, 3)
    while True:
        shape = rng.integers(0, 256, 3)
        if abs(luminance(shape) - luminance(background)) >= MIN_CONTRAST:
            return background, shape


def texture(rng: np.random.Generator, size: int, base: np.ndarray) -> np.ndarray:
    """A background [size, size, 3] uint8: `base` with faint stripes, checks or blocky noise (+-TEXTURE levels)."""
    yy, xx = np.meshgrid(np.arange(size) / size, np.arange(size) / size, indexing="ij")
    kind = rng.integers(3)
    freq = rng.uniform(2, 8)
    if kind == 0:
        theta = rng.uniform(0, math.pi)
        mix = np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)))
    elif kind == 1:
        mix = ((np.floor(xx * freq) + np.floor(yy * freq)) % 2) * 2 - 1.0
    else:
        coarse = rng.uniform(-1, 1, size=(6, 6))
        mix = coarse[(np.arange(size) * 6 // size)[:, None], (np.arange(size) * 6 // size)[None, :]]
    tint = rng.uniform(-1, 1, 3) * TEXTURE
    return (base + mix[..., None] * tint).clip(0, 255).astype(np.uint8)


def draw_shape(cls: int, rng: np.random.Generator, resolution: int) -> np.ndarray:
    """One image of class `cls` as uint8 [3, R, R]."""
    size = resolution * SUPERSAMPLE
    background_colour, shape_colour = colours(rng)
    img = Image.fromarray(texture(rng, resolution, background_colour)).resize((size, size), Image.Resampling.NEAREST)
    background = img.copy()
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.28, 0.42) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    angle = rng.uniform(0, 2 * math.pi)
    color = tuple(int(v) for v in shape_colour)
    box = (cx - r, cy - r, cx + r, cy + r)
    width = max(2, int(r * 0.3))
    name = CLASSES[cls]
    if name == "circle":
        draw.ellipse(box, fill=color)
    elif name == "ring":
        draw.ellipse(box, outline=color, width=width)
    elif name in ("square", "frame", "diamond"):
        pts = polygon(cx, cy, r, 4, angle if name != "diamond" else 0.0)
        if name == "diamond":  # a rhombus: one diagonal shorter, at a random orientation
            pts = [(cx + (x - cx) * (0.55 if k % 2 else 1.0), cy + (y - cy) * (0.55 if k % 2 else 1.0))
                   for k, (x, y) in enumerate(pts)]
            pts = [(cx + (x - cx) * math.cos(angle) - (y - cy) * math.sin(angle),
                    cy + (x - cx) * math.sin(angle) + (y - cy) * math.cos(angle)) for x, y in pts]
        if name == "frame":
            draw.polygon(pts, outline=color, width=width)
        else:
            draw.polygon(pts, fill=color)
    elif name == "triangle":
        draw.polygon(polygon(cx, cy, r, 3, angle), fill=color)
    elif name == "hexagon":
        draw.polygon(polygon(cx, cy, r, 6, angle), fill=color)
    elif name == "star":
        draw.polygon(polygon(cx, cy, r, 5, angle, inner=0.45), fill=color)
    elif name == "plus":
        arm = r * 0.32
        bar = [(-r, -arm), (r, -arm), (r, arm), (-r, arm)]
        for rot in (angle, angle + math.pi / 2):
            draw.polygon([(cx + x * math.cos(rot) - y * math.sin(rot), cy + x * math.sin(rot) + y * math.cos(rot))
                          for x, y in bar], fill=color)
    elif name == "crescent":
        draw.ellipse(box, fill=color)
        off = r * 0.5
        ox, oy = cx + off * math.cos(angle), cy + off * math.sin(angle)
        mask = Image.new("L", img.size, 0)
        ImageDraw.Draw(mask).ellipse((ox - r * 0.85, oy - r * 0.85, ox + r * 0.85, oy + r * 0.85), fill=255)
        img = Image.composite(background, img, mask)  # the background bites a disk out of the circle
    img = img.resize((resolution, resolution), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


@lru_cache(maxsize=2)
def shape_images(per_class: int, resolution: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """`per_class` images of each class as uint8 [N,3,R,R] and their labels (class-major order); memoised."""
    images, labels = [], []
    for cls in range(len(CLASSES)):
        for k in range(per_class):
            images.append(draw_shape(cls, np.random.default_rng([seed, cls, k]), resolution))
            labels.append(cls)
    return torch.from_numpy(np.stack(images)), np.asarray(labels, dtype=np.int64)


def shapes(
    name: str = "shapes",
    resolution: int = 32,
    train_per_class: int = 300,
    test_per_class: int = 60,
    seed: int = 0,
    samples_per_class: int | None = None,
    subset_seed: int = 0,
) -> DatasetSplits:
    """Shapes with a fixed split: the first `train_per_class` images of each class train, the rest evaluate.

    sample_id = position in the class-major list of all drawn images (stable across subsets).
    """
    check_params(resolution, None, samples_per_class)
    for key, value in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "train_per_class" else 1):
            raise SatlabError(f"dataset.{key} must be a {'non-negative' if key == 'train_per_class' else 'positive'} "
                              f"integer, got {value!r}")
    per_class = train_per_class + test_per_class
    images, labels = shape_images(per_class, resolution, seed)
    ids = np.arange(len(labels))
    is_train = (ids % per_class) < train_per_class
    full = TensorImages(images, labels, ids)
    return DatasetSplits(
        name=name,
        train=full.take(ids[is_train]),
        eval=balanced_subset(full.take(ids[~is_train]), samples_per_class, subset_seed),
        num_classes=len(CLASSES),
        resolution=resolution,
        class_names=list(CLASSES),
    )
