"""SAT at a stated precision: the interval a pair's SAT gets from the images seen so far, and the rounds in which
images are taken, for maps whose pairs stop when their interval is narrow enough (`sat.precision`, issue 24: the
engine does not use this yet). Pure NumPy.

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

import numpy as np

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
