"""The SAT formula and the quantities derived from per-sample transfer records. Pure NumPy, no framework.

Records (see `satlab.sat.records`): `correct[N,S]` (model n classifies sample s correctly) and `fooled[N,N,S]`
(the target misclassifies the source's adversarial example of s; False outside X_AB by convention).

    SAT(A,B) = ln( max( eps_s, 100 / (2|X_AB|) * sum_{x in X_AB} [ 1(A(x_B) != y) + 1(B(x_A) != y) ] ) )

with X_AB the samples both A and B classify correctly and x_A the adversarial example of x made on A.

In a map at a stated precision (`sat.precision`) each pair used only the first images of the map's order: every
function takes that as `scope` [N,N,S] bool (`Records.scope()`; None: every image), and X_AB is then the images
both classify correctly within the pair's scope.
"""

from __future__ import annotations

import warnings

import numpy as np

from satlab.sat.precision import sat_interval
from satlab.sat.resample import bootstrap_weights

DEFAULT_EPS_S = 1e-8


def joint_correct(correct: np.ndarray, scope: np.ndarray | None = None) -> np.ndarray:
    """|X_AB| for every pair: the number of samples (within `scope`) both models classify correctly, int [N,N]."""
    if scope is not None:
        return joint_mask(correct, scope).sum(axis=-1)
    c = np.asarray(correct, dtype=np.int64)
    return c @ c.T


def joint_mask(correct: np.ndarray, scope: np.ndarray | None = None) -> np.ndarray:
    """X_AB of every pair as a mask [N,N,S] (within `scope`)."""
    correct = np.asarray(correct, dtype=bool)
    both = correct[:, None, :] & correct[None, :, :]
    return both if scope is None else both & scope


def fooled_counts(correct: np.ndarray, fooled: np.ndarray, scope: np.ndarray | None = None) -> np.ndarray:
    """For every (source, target): how many samples of X_AB the source's adversarial examples fool, int [N,N]."""
    return (np.asarray(fooled, dtype=bool) & joint_mask(correct, scope)).sum(axis=-1)


def transfer_rates(correct: np.ndarray, fooled: np.ndarray, scope: np.ndarray | None = None) -> np.ndarray:
    """Asymmetric transfer rate in %: row = source, column = target, share of X_AB fooled. NaN where X_AB is empty.

    The diagonal is each model's white-box attack success rate on the samples it classifies correctly.
    """
    n_both = joint_correct(correct, scope)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_both > 0, 100.0 * fooled_counts(correct, fooled, scope) / np.maximum(n_both, 1), np.nan)


def sat_matrix(correct: np.ndarray, fooled: np.ndarray, eps_s: float = DEFAULT_EPS_S,
               scope: np.ndarray | None = None) -> np.ndarray:
    """The SAT matrix (natural log), symmetric by construction. NaN, with a warning, where X_AB is empty."""
    if eps_s <= 0:
        raise ValueError(f"eps_s must be > 0 (it floors the argument of the log), got {eps_s}")
    n_both = joint_correct(correct, scope)
    counts = fooled_counts(correct, fooled, scope)
    sym = counts + counts.T
    empty = n_both == 0
    if empty.any():
        warnings.warn(
            f"{int(empty.sum())} model pair(s) have an empty X_AB (no sample both classify correctly); "
            "their SAT is NaN",
            RuntimeWarning,
            stacklevel=2,
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = 100.0 * sym / (2.0 * np.maximum(n_both, 1))
    return np.where(empty, np.nan, np.log(np.maximum(eps_s, rate)))


def whitebox_success(correct: np.ndarray, fooled: np.ndarray) -> np.ndarray:
    """Per-model white-box attack success in % of the samples it classifies correctly (diagonal of the rates)."""
    return np.diagonal(transfer_rates(correct, fooled)).copy()


def floored(sat: np.ndarray, eps_s: float = DEFAULT_EPS_S) -> np.ndarray:
    """Cells at the eps_s floor, i.e. rate < eps_s (0% transfer): SAT <= ln eps_s (1e-6 slack for CSV rounding)."""
    sat = np.asarray(sat, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.isfinite(sat) & (sat <= np.log(eps_s) + 1e-6)


def zero_rate_bound(n_joint: np.ndarray) -> np.ndarray:
    """Rule of three: the 95% upper bound (in %) of a rate with no event in 2|X_AB| trials, 300 / (2|X_AB|).

    NaN where X_AB is empty."""
    n_joint = np.asarray(n_joint, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_joint > 0, 300.0 / (2.0 * n_joint), np.nan)


def sat_bootstrap(
    correct: np.ndarray,
    fooled: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    eps_s: float = DEFAULT_EPS_S,
    chunk: int = 250,
    scope: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of every pair's SAT over images -> (low, high), symmetric float [N,N].

    Each resample draws S images with replacement (`satlab.sat.resample.bootstrap_weights`, one generator seeded
    with `seed`, `chunk` resamples at a time) and recomputes every pair's SAT with the same formula (X_AB, the
    eps_s floor); the CI is the ((1-level)/2, (1+level)/2) percentiles of the resamples.
    Vectorised: per pair, |X_AB| and the fooled count of a resample are dot products of per-image indicators with
    the resample's draw counts, so all pairs x resamples are two float32 matmuls (exact: every sum < 2^24).
    NaN where X_AB is empty in every resample; resamples with an empty X_AB are left out. A pair with no event at
    all (floored) has the floor in every resample, which is no interval: its CI is [ln eps_s, ln of the rule-of-
    three bound `zero_rate_bound`], the exact 95% range of a rate with 0 events.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    correct = np.asarray(correct, dtype=bool)
    fooled = np.asarray(fooled, dtype=bool)
    n, s = correct.shape
    rows, cols = np.triu_indices(n)  # the diagonal too (white-box), as in sat_matrix
    both = correct[rows] & correct[cols]  # [P, S]
    if scope is not None:
        both &= np.asarray(scope, dtype=bool)[rows, cols]
    events = (fooled[rows, cols] & both).astype(np.float32) + (fooled[cols, rows] & both)
    both = both.astype(np.float32)
    rng = np.random.default_rng(seed)
    sats = []
    for start in range(0, n_boot, chunk):
        weights = bootstrap_weights(s, min(chunk, n_boot - start), rng).T  # [S, b]
        n_both, hits = both @ weights, events @ weights
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = 100.0 * hits / (2.0 * n_both)
            sats.append(np.where(n_both > 0, np.log(np.maximum(eps_s, rate)), np.nan))
    sats = np.concatenate(sats, axis=1)
    low, high = np.full((n, n), np.nan), np.full((n, n), np.nan)
    ok = np.isfinite(sats).any(axis=1)
    if ok.any():
        q = np.nanpercentile(sats[ok], [50 * (1 - level), 50 * (1 + level)], axis=1)
        zero = events[ok].sum(axis=1) == 0
        q[1, zero] = np.log(np.maximum(eps_s, zero_rate_bound(both[ok][zero].sum(axis=1))))
        for out, vals in zip((low, high), q):
            out[rows[ok], cols[ok]] = vals
            out[cols[ok], rows[ok]] = vals
    return low, high


def pair_table(
    names: list[str], correct: np.ndarray, fooled: np.ndarray, eps_s: float = DEFAULT_EPS_S,
    images_used: np.ndarray | None = None, scope: np.ndarray | None = None, precision: float | None = None,
    **bootstrap,
) -> dict[str, np.ndarray]:
    """One row per model pair (i < j): model_a, model_b, sat, ci_low, ci_high, n_joint (|X_AB|), transfer_ab,
    transfer_ba (%), floored (rate 0 -> ln eps_s). `bootstrap` goes to `sat_bootstrap` (n_boot, seed, level);
    n_boot=0 leaves the CI columns NaN.

    A map at a stated precision (`images_used` [N,N] and `scope`, `Records`) adds images_used (the images of the
    map's order the pair used), the stopping rule's interval stop_low / stop_high and its half_width
    (`satlab.sat.precision.sat_interval`), and, with `precision` (h), reached_h (half_width <= h)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty X_AB: NaN, already reported by the caller
        sat = sat_matrix(correct, fooled, eps_s, scope)
    if bootstrap.get("n_boot", 1) == 0:
        low = high = np.full(sat.shape, np.nan)
    else:
        low, high = sat_bootstrap(correct, fooled, eps_s=eps_s, scope=scope, **bootstrap)
    rates = transfer_rates(correct, fooled, scope)
    rows, cols = np.triu_indices(len(names), k=1)
    n_joint = joint_correct(correct, scope)
    table = {
        "model_a": np.asarray(names, dtype=object)[rows], "model_b": np.asarray(names, dtype=object)[cols],
        "sat": sat[rows, cols], "ci_low": low[rows, cols], "ci_high": high[rows, cols],
        "n_joint": n_joint[rows, cols], "transfer_ab": rates[rows, cols],
        "transfer_ba": rates[cols, rows], "floored": floored(sat, eps_s)[rows, cols],
    }
    if images_used is not None:
        both = joint_mask(correct, scope)[rows, cols]  # [P, S]
        fooled = np.asarray(fooled, dtype=bool)
        c = (fooled[rows, cols] & both).astype(np.int64) + (fooled[cols, rows] & both)
        k, q = c.sum(axis=1), (c * c).sum(axis=1)
        stop_low, stop_high = sat_interval(k, n_joint[rows, cols], q, eps_s=eps_s)
        width = np.where(k > 0, (stop_high - stop_low) / 2, np.inf)
        table |= {"images_used": np.asarray(images_used)[rows, cols], "stop_low": stop_low, "stop_high": stop_high,
                  "half_width": width}
        if precision is not None:
            table["reached_h"] = width <= precision
    return table
