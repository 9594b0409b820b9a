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
and the pairs that did not reach h. The fixed map's own intervals are the baseline row. Every row also says how
often a model's nearest neighbour (its highest-SAT partner) is found, i.e. the highest estimate is the true one.

The row "rank" measures a rank mode (issue 24's optional `sat.resolve=neighbours`, not built): a pair keeps taking
images while it could still be the nearest neighbour of one of its two models whose nearest neighbour is not yet
told apart from the rest (its upper end is at or above the highest lower end among that model's pairs, and that
model's top pair's lower end is not above every other pair's upper end).

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
    for h in [None, *h_values, "rank"]:
        last = len(ends) - 1
        if h == "rank":
            stop = rank_stop(lo, hi, pairs, models)
        else:
            stop = np.full(len(sat), last) if h is None else np.where((width <= h).any(axis=1),
                                                                       (width <= h).argmax(axis=1), last)
        at = np.arange(len(sat))
        covered = (lo[at, stop] <= sat) & (sat <= hi[at, stop])
        attacked = np.zeros(models)  # per source: the images its longest-running pair needs
        np.maximum.at(attacked, pairs[:, 0], ends[stop])
        np.maximum.at(attacked, pairs[:, 1], ends[stop])
        rows.append({"h": h, "coverage": covered.mean(), "evaluations": (2 * n[at, stop]).sum() / (2 * n[:, last]).sum(),
                     "attacks": attacked.sum() / (models * images),
                     "not reached": 0.0 if h in (None, "rank") else float((width[at, stop] > h).mean()),
                     "median half-width": float(np.median(width[at, stop])),
                     "nearest found": nearest_found(sat, k[at, stop] / (2 * n[at, stop]), pairs, models)})
    return rows


def partners(pairs: np.ndarray, models: int) -> list[np.ndarray]:
    """Per model, the indices of its pairs."""
    return [np.flatnonzero((pairs[:, 0] == m) | (pairs[:, 1] == m)) for m in range(models)]


def nearest_found(sat: np.ndarray, estimate: np.ndarray, pairs: np.ndarray, models: int) -> float:
    """Share of the models whose highest estimated pair is their highest true pair."""
    return float(np.mean([np.argmax(estimate[mine]) == np.argmax(sat[mine]) for mine in partners(pairs, models)]))


def rank_stop(lo: np.ndarray, hi: np.ndarray, pairs: np.ndarray, models: int) -> np.ndarray:
    """The round each pair stops at under the rank mode (see the module docstring); [P] round indices."""
    count, last = lo.shape
    stop = np.full(count, -1)
    mine = partners(pairs, models)
    for r in range(last):
        at = np.where(stop < 0, r, stop)
        low, high = lo[np.arange(count), at], hi[np.arange(count), at]
        needed = np.zeros(count, dtype=bool)
        for m, own in enumerate(mine):
            top = own[np.argmax(low[own])]
            others = own[own != top]
            if low[top] > high[others].max():  # told apart: its pairs are not needed for it
                continue
            needed[own[high[own] >= low[top]]] = True
        stop[(stop < 0) & ~needed] = r
    stop[stop < 0] = last - 1
    return stop


def section_simulation(matrix: Path, images: int, share: float, rhos: list[float], h_values: list[float], reps: int,
                       seed: int) -> dict[tuple[float, float | None], dict[str, float]]:
    """Print the simulation's table (markdown); return its rows by (correlation, h), h None for the fixed map."""
    frame = pd.read_csv(matrix, index_col=0)
    upper = np.triu_indices(len(frame), k=1)
    sat = frame.to_numpy(dtype=float)[upper]
    pairs = np.stack(upper, axis=1)
    print(f"{len(sat)} pairs of {matrix.name} (SAT {sat.min():.2f}-{sat.max():.2f}, transfer "
          f"{np.exp(sat.min()):.1f}-{np.exp(sat.max()):.1f} %), {images} images in rounds "
          f"{rounds(images)}, {share:.0%} in X_AB, {reps} simulated maps per row, seed {seed}\n")
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    print("| correlation of the directions | h (ln units) | coverage of the final 95 % intervals | evaluations "
          "vs fixed | attacks vs fixed | pairs not reaching h | median half-width | nearest neighbour found |")
    print("|---|---|---|---|---|---|---|---|")
    table = {}
    for rho in rhos:
        runs = [run_once(sat, pairs, len(frame), h_values, images, share, rho, rng) for _ in range(reps)]
        for i, first in enumerate(runs[0]):
            mean = {key: float(np.mean([r[i][key] for r in runs])) for key in first if key != "h"}
            table[rho, first["h"]] = mean
            label = {None: f"fixed {images}", "rank": "rank"}.get(first["h"]) or f"{first['h']:.2f}"
            print(f"| {rho} | {label} | {mean['coverage']:.3f} | {mean['evaluations']:.1%} | {mean['attacks']:.1%} "
                  f"| {mean['not reached']:.1%} | {mean['median half-width']:.3f} | {mean['nearest found']:.1%} |")
    print(f"\n{time.perf_counter() - start:.0f} s\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args()
    if not args.matrix.is_file():
        sys.exit(f"precision_sim: no matrix at {args.matrix} (the paper's SAT_release.csv; pass --matrix)")
    section_simulation(args.matrix, args.images, args.share, args.rho, args.h, args.reps, args.seed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--matrix", type=Path, default=RELEASED, help="a sat_matrix.csv (default: the paper's)")
    parser.add_argument("--images", type=int, default=5000, help="the fixed map's image count")
    parser.add_argument("--share", type=float, default=0.64, help="share of the images in X_AB")
    parser.add_argument("--rho", type=float, nargs="+", default=[0.0, 0.5], help="correlation of the directions")
    parser.add_argument("--h", type=float, nargs="+", default=[0.10, 0.15, 0.20], help="half-widths (ln units)")
    parser.add_argument("--reps", type=int, default=10, help="simulated maps per setting")
    parser.add_argument("--seed", type=int, default=0)


if __name__ == "__main__":
    main()
