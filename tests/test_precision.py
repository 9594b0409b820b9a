"""The interval of a pair's SAT for maps at a stated precision (satlab/sat/precision.py): Wilson's interval by
hand, the design effect of the two directions, the rounds, and the coverage of the stopping rule."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from satlab.sat.precision import half_width, needed_images, rounds, sat_interval


def test_independent_directions_give_wilsons_interval_from_the_tables():
    # 15 fooled of 100 trials (50 images, two directions), by hand: centre (0.15 + 1.96^2/200) / (1 + 1.96^2/100)
    # = 0.16295, half-width 1.96 / 1.038416 * sqrt(0.15 * 0.85 / 100 + 1.96^2 / 40000) = 0.06989
    lo, hi = sat_interval(fooled=15, images=50)
    assert math.exp(lo) / 100 == pytest.approx(0.09306, abs=2e-5) and math.exp(hi) / 100 == pytest.approx(0.23284, abs=2e-5)


def test_fully_correlated_directions_count_each_image_once():
    # every image fools both directions or neither: 2n trials carry the information of n
    images, both = 200, 30
    lo, hi = sat_interval(fooled=2 * both, images=images, squares=4 * both)
    lo_n, hi_n = sat_interval(fooled=both, images=images // 2)  # Wilson on n = 200 trials, 30 successes
    assert (lo, hi) == pytest.approx((lo_n, hi_n), abs=1e-3)
    assert half_width(2 * both, images, 4 * both) > half_width(2 * both, images)  # wider than independent


def test_no_image_fooled_has_no_lower_end_and_no_images_no_interval():
    lo, hi = sat_interval(np.array([0, 3]), np.array([500, 0]))
    assert lo[0] == pytest.approx(math.log(1e-8)) and math.exp(hi[0]) / 100 < 0.005 and np.isnan(lo[1])
    assert half_width(0, 500) == math.inf


def test_rounds_double_up_to_the_total():
    assert rounds(5000) == [250, 500, 1000, 2000, 4000, 5000]
    assert rounds(250) == [250] and rounds(40) == [40] and rounds(0) == []


def test_stopping_when_narrow_enough_keeps_the_coverage():
    """2,000 simulated pairs per rate, stopped at the first round whose half-width is <= 0.15: their final
    intervals hold the true SAT >= 93 % of the time (a fixed seed: the same draw every run)."""
    rng = np.random.default_rng(0)
    ends = np.array(rounds(5000))
    used = []
    for rate in (0.06, 0.25, 0.6):
        c = rng.binomial(2, rate, size=(2000, 5000))
        k, n, q = np.cumsum(c, 1)[:, ends - 1], np.broadcast_to(ends, (2000, len(ends))), np.cumsum(c * c, 1)[:, ends - 1]
        width = half_width(k, n, q)
        stop = np.where((width <= 0.15).any(1), (width <= 0.15).argmax(1), len(ends) - 1)
        lo, hi = sat_interval(k[np.arange(2000), stop], ends[stop], q[np.arange(2000), stop])
        truth = math.log(100 * rate)
        assert ((lo <= truth) & (truth <= hi)).mean() >= 0.93
        used.append(ends[stop].mean())
    assert used[0] > used[1] > used[2] or used[1] == used[2] == ends[0]  # rare transfers need the most images
    assert used[0] >= needed_images(0.06, 0.15) / 2 and used[2] == ends[0]


RELEASED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "sat-official" / "SAT_release.csv"


@pytest.mark.skipif(not RELEASED.is_file(), reason="the paper's SAT_release.csv is not in ../shared/reference/sat-official/")
def test_the_simulation_benchmark_runs_on_the_released_matrix():
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" /
                                               "precision_sim.py"), "--reps", "1", "--rho", "0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| 0.0 |")]
    assert [r[1].strip() for r in rows] == ["fixed 5000", "0.10", "0.15", "0.20", "rank"]
    coverage = [float(r[2]) for r in rows]
    assert all(c >= 0.93 for c in coverage)
    found = [float(r[7].strip(" %")) for r in rows]
    assert abs(found[4] - found[0]) <= 1.0  # the rank mode finds the nearest neighbours the fixed map finds
    evaluations = [float(r[3].strip(" %")) for r in rows]
    assert evaluations[0] == 100.0 and evaluations[1] > evaluations[2] > evaluations[3]  # wider h, fewer images


@pytest.mark.skipif(not RELEASED.is_file(), reason="the paper's SAT_release.csv is not in ../shared/reference/sat-official/")
def test_the_precision_benchmark_prints_the_plan_beside_the_fixed_one():
    """make bench-precision without its real map (section (b) trains a zoo for 25 min): the simulation and the
    costed plan, on a sample of 3 timm weights' FLOPs."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" /
                                               "precision_bench.py"), "--skip", "b", "--reps", "1", "--sample", "3"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    plans = [line.split("|")[1:-1] for line in done.stdout.splitlines()
             if line.startswith(("| fixed 5,000", "| h = ", "| rank mode"))]
    assert [p[0].strip()[:8] for p in plans] == ["fixed 5,"] + ["h = 0.15"] * 3 + ["rank mod"] * 3
    hours = [float(p[-1].replace(",", "")) for p in plans]
    assert hours[0] > max(hours[1:]) > 0  # every adaptive plan below the fixed one
