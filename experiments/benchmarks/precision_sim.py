"""Maps at a stated precision, simulated (issue 24): does stopping each pair when its interval is narrow enough keep
the intervals' coverage, and how many evaluations does it save against the fixed image count?

Every pair of the paper's released 69x69 matrix gets its SAT as the true value: transfer rate p = exp(SAT) / 100 in
each direction. Per image: in X_AB with probability `--share` (the paper's models classify ~80 % of ImageNet
validation images correctly, so ~64 % are in X_AB), then the two directions fooled with rate p each and
correlation `--rho`. Images are taken in rounds (`satlab.sat.precision.rounds`: 250, 500, 1,000, ... up to
`--images`); after each round a pair's interval (`sat_interval`: Wilson with the per-image design effect) is
computed and the pair stops when its half-width is <= h, or at the last round (then it did not reach h). Reported
per h: coverage of the final intervals (the true SAT inside), the evaluations used (2 per image of X_AB seen) and
the attacks (a source attacks as many images as its longest-running pair needs) as a share of the fixed map's,
and the pairs that did not reach h. The fixed map's own intervals are the baseline row.

    python experiments/benchmarks/precision_sim.py                        # the released matrix from ../shared
    python experiments/benchmarks/precision_sim.py --matrix SAT_release.csv --reps 20 --rho 0.5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from satlab.sat.precision import half_width, rounds, sat_interval  # noqa: E402

RELEASED = ROOT.parent / "shared" / "reference" / "sat-official" / "SAT_release.csv"


def simulate(sat: np.ndarray, images: int, share: float, rho: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Per pair (rows) and image (columns): whether it is in X_AB, and c = directions fooled (0, 1 or 2)."""
    p = np.exp(sat)[:, None] / 100
    both = p * p + rho * p * (1 - p)  # P(both directions fooled) for marginal p and correlation rho
    u = rng.random((len(sat), images))
    c = np.where(u < both, 2, np.where(u < 2 * p - both, 1, 0)).astype(np.int8)
    inside = rng.random((len(sat), images)) < share
    return inside, c * inside


def run_once(sat: np.ndarray, pairs: np.ndarray, models: int, h_values: list[float], images: int, share: float,
             rho: float, rng: np.random.Generator) -> list[dict]:
    inside, c = simulate(sat, images, share, rho, rng)
    ends = np.array(rounds(images))
    n = np.cumsum(inside, axis=1)[:, ends - 1]  # images of X_AB seen after each round [P, R]
    k = np.cumsum(c, axis=1, dtype=np.int64)[:, ends - 1]
    q = np.cumsum(c.astype(np.int64) ** 2, axis=1)[:, ends - 1]
    width = half_width(k, n, q)
    lo, hi = sat_interval(k, n, q)
    rows = []
    for h in [None, *h_values]:
        last = len(ends) - 1
        stop = np.full(len(sat), last) if h is None else np.where((width <= h).any(axis=1),
                                                                   (width <= h).argmax(axis=1), last)
        at = np.arange(len(sat))
        covered = (lo[at, stop] <= sat) & (sat <= hi[at, stop])
        attacked = np.zeros(models)  # per source: the images its longest-running pair needs
        np.maximum.at(attacked, pairs[:, 0], ends[stop])
        np.maximum.at(attacked, pairs[:, 1], ends[stop])
        rows.append({"h": h, "coverage": covered.mean(), "evaluations": (2 * n[at, stop]).sum() / (2 * n[:, last]).sum(),
                     "attacks": attacked.sum() / (models * images),
                     "not reached": 0.0 if h is None else float((width[at, stop] > h).mean()),
                     "median half-width": float(np.median(width[at, stop]))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--matrix", type=Path, default=RELEASED, help="a sat_matrix.csv (default: the paper's)")
    parser.add_argument("--images", type=int, default=5000, help="the fixed map's image count")
    parser.add_argument("--share", type=float, default=0.64, help="share of the images in X_AB")
    parser.add_argument("--rho", type=float, nargs="+", default=[0.0, 0.5], help="correlation of the directions")
    parser.add_argument("--h", type=float, nargs="+", default=[0.10, 0.15, 0.20], help="half-widths (ln units)")
    parser.add_argument("--reps", type=int, default=10, help="simulated maps per setting")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.matrix.is_file():
        sys.exit(f"precision_sim: no matrix at {args.matrix} (the paper's SAT_release.csv; pass --matrix)")
    matrix = pd.read_csv(args.matrix, index_col=0)
    upper = np.triu_indices(len(matrix), k=1)
    sat = matrix.to_numpy(dtype=float)[upper]
    pairs = np.stack(upper, axis=1)
    print(f"{len(sat)} pairs of {args.matrix.name} (SAT {sat.min():.2f}-{sat.max():.2f}, transfer "
          f"{np.exp(sat.min()):.1f}-{np.exp(sat.max()):.1f} %), {args.images} images in rounds "
          f"{rounds(args.images)}, {args.share:.0%} in X_AB, {args.reps} simulated maps per row, seed {args.seed}\n")
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    print("| correlation of the directions | h (ln units) | coverage of the final 95 % intervals | evaluations "
          "vs fixed | attacks vs fixed | pairs not reaching h | median half-width |")
    print("|---|---|---|---|---|---|---|")
    for rho in args.rho:
        runs = [run_once(sat, pairs, len(matrix), args.h, args.images, args.share, rho, rng) for _ in range(args.reps)]
        for i, first in enumerate(runs[0]):
            mean = {key: np.mean([r[i][key] for r in runs]) for key in first if key != "h"}
            label = f"fixed {args.images}" if first["h"] is None else f"{first['h']:.2f}"
            print(f"| {rho} | {label} | {mean['coverage']:.3f} | {mean['evaluations']:.1%} | {mean['attacks']:.1%} "
                  f"| {mean['not reached']:.1%} | {mean['median half-width']:.3f} |")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
