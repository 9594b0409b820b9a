"""SAT at a stated precision: the interval a pair's SAT gets from the images seen so far, and the rounds in which
images are taken, for maps whose pairs stop when their interval is narrow enough (`sat.precision`; the engine's
rounds are in `satlab.sat.engine`, the stopping rule on the cache's rows in `satlab.sat.stopping`). Pure NumPy.

A pair (A, B) seen on n images of X_AB has, per image i, c_i in {0, 1, 2} fooled directions (B fooled by x_A, A by
x_B). SAT = ln(100 p) with p = sum(c) / 2n. The two directions of one image are not independent trials (an image
whose example transfers one way tends to transfer the other way too), so the interval is Wilson's score interval
for p with the effective number of trials 2n / deff, where deff = s^2 / (2 p (1 - p)) is the design effect of the
per-image counts (s^2 their sample variance; at least 1, so never narrower than for 2n independent trials), then
mapped through ln(100 p) (monotone, so the coverage carries over). Wilson's interval keeps its coverage at the small
rates (p = 6 %) where the normal interval on ln p does not, and has a positive lower end whenever a direction was
fooled. The coverage under stopping when the interval is narrow enough is checked by simulation
(`experiments/benchmarks/precision_sim.py`, docs/benchmarks.md#maps-at-a-stated-precision).

    >>> lo, hi = sat_interval(fooled=150, images=400, squares=230)
    >>> round(lo, 2), round(hi, 2)
    (2.76, 3.1)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from satlab.utils import SatlabError

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def sat_interval(fooled, images, squares=None, z: float = Z95, eps_s: float = 1e-8):
    """The ~95 % interval of SAT (natural log of the transfer percentage) of pairs seen on `images` images of X_AB.

    Args:
        fooled: sum over the images of c_i, the directions fooled (0, 1 or 2 per image); int or array.
        images: n, the images of X_AB seen; same shape.
        squares: sum of c_i^2 (for the design effect); None: the two directions as independent trials.
        z: the normal quantile of the level (1.96: 95 %).
        eps_s: the floor of SAT's argument (ln eps_s where no image was fooled).

    Returns:
        (lo, hi) in ln units, arrays of the inputs' shape (floats for scalars); NaN where `images` is 0.
    """
    k, n = np.asarray(fooled, dtype=float), np.asarray(images, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / (2 * n)
        deff = np.ones_like(p)
        if squares is not None:
            var = (np.asarray(squares, dtype=float) - k * k / n) / np.maximum(n - 1, 1)
            deff = np.where(p * (1 - p) > 0, var / (2 * p * (1 - p)), 1.0)
        trials = 2 * n / np.maximum(deff, 1.0)
        centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
        half = z / (1 + z * z / trials) * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
        lo = np.log(np.maximum(eps_s, 100 * np.clip(centre - half, 0, 1)))
        hi = np.log(np.maximum(eps_s, 100 * np.clip(centre + half, 0, 1)))
    lo, hi = np.where(n > 0, lo, np.nan), np.where(n > 0, hi, np.nan)
    return (float(lo), float(hi)) if lo.ndim == 0 else (lo, hi)


def half_width(fooled, images, squares=None, z: float = Z95):
    """Half the width of `sat_interval`, in ln units (inf where no direction was fooled: no lower end)."""
    lo, hi = sat_interval(fooled, images, squares, z)
    width = np.where(np.asarray(fooled) > 0, (np.asarray(hi) - np.asarray(lo)) / 2, np.inf)
    return float(width) if width.ndim == 0 else width


def rounds(total: int, first: int = 250) -> list[int]:
    """How many images (in the map's fixed seeded order) a pair has seen after each round: `first`, doubling,
    then `total` (`rounds(5000)` = [250, 500, 1000, 2000, 4000, 5000])."""
    if total <= 0:
        return []
    sizes, size = [], max(1, int(first))
    while size < total:
        sizes.append(size)
        size *= 2
    return sizes + [int(total)]


def needed_images(rate: float, h: float, share: float = 1.0, z: float = Z95) -> float:
    """About how many images a pair with transfer rate `rate` (0-1) needs for a half-width `h` (ln units) when a
    share `share` of the images is in X_AB, for independent directions (the delta method: h ~ z sqrt((1-p) / 2np)).
    Inf for a rate of 0."""
    if rate <= 0:
        return math.inf
    return z * z * (1 - rate) / (2 * rate * h * h) / share


def image_order(seed: int, images: int) -> np.ndarray:
    """The fixed seeded order in which a map at a stated precision takes its images: a permutation of the dataset
    positions [S] (dataset folders are sorted by class, so their own order would give the first rounds one class).
    A pair seen on m images used the positions `image_order(seed, S)[:m]`; a function of the run seed and S only,
    and both are part of every row's cache key."""
    return np.random.default_rng([int(seed), 24]).permutation(int(images))


def image_rank(order: np.ndarray) -> np.ndarray:
    """Each position's place in `order` [S] (its inverse permutation)."""
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def pair_counts(both: np.ndarray, fooled_ab: np.ndarray, fooled_ba: np.ndarray) -> tuple[int, int, int]:
    """A pair's (fooled, images, squares) for `sat_interval` from boolean [S] arrays: the images it uses (X_AB within
    its prefix, `both`) and the two directions' fooled flags."""
    c = (fooled_ab & both).astype(np.int64) + (fooled_ba & both)
    return int(c.sum()), int(both.sum()), int((c * c).sum())


def parse_precision(value: Any) -> float | None:
    """`sat.precision`: null (every pair on every image) or the 95 % half-width h > 0 in ln units; else SatlabError."""
    if value is None:
        return None
    hint = "give the 95 % half-width of each pair's SAT in ln units, e.g. sat.precision=0.15, or null for every image"
    if isinstance(value, bool):
        raise SatlabError(f"sat.precision={value}: {hint}")
    try:
        h = float(value)
    except (TypeError, ValueError):
        raise SatlabError(f"sat.precision={value} is not a number; {hint}") from None
    if not math.isfinite(h) or h <= 0:
        raise SatlabError(f"sat.precision={value}: must be a finite number > 0; {hint}")
    return h


def narrowest(images: int, z: float = Z95) -> float:
    """The narrowest half-width any pair can reach on `images` images: every image in X_AB and fooled both ways
    (Wilson's interval at p = 1 on 2 x images trials; a lower rate only widens it)."""
    return float(half_width(2 * images, images, 4 * images, z)) if images > 0 else math.inf


def check_reachable(h: float, images: int) -> None:
    """SatlabError when no pair can reach `h` on the map's `images` images (`narrowest`), before any model work."""
    best = narrowest(images)
    if h < best:
        raise SatlabError(f"sat.precision={h:g}: no pair can reach it on {images} image(s) (even a pair fooled both "
                          f"ways on every image has a half-width of {best:.3g}); give sat.precision >= {best:.2g} or "
                          "more images (dataset.samples_per_class)")


def lowest_rate(h: float, images: int, share: float = 1.0) -> float:
    """About the lowest transfer rate (0-1) whose pairs reach `h` on `images` images with a share `share` of them
    in X_AB (independent directions; `needed_images` solved for the rate). Pairs below it use every image."""
    if images <= 0:
        return 1.0
    k = Z95 * Z95 / (2 * h * h * share * images)  # needed_images = k (1 - p) / p * images  ->  p = k / (1 + k)
    return k / (1 + k)
