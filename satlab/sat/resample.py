"""The two resampling schemes of satlab's statistics, written once. Pure NumPy, no framework.

- Bootstrap over IMAGES (`bootstrap_weights`): a resample of S images drawn with replacement, written as how often
  each image is drawn, so that any per-image sum under the resample is a dot product with the counts. Used for
  the CIs of SAT (`satlab.sat.metric.sat_bootstrap`) and of the ensemble correlations (`satlab.ensemble.stats`).
- Permutation of MODEL LABELS (`mantel_test`, the Mantel test): the rows and columns of a model x model matrix
  are permuted together and a statistic of its pairs recomputed. Pairs that share a model are not independent,
  so permuting the pairs themselves would overstate significance. Used by `satlab.analysis.compare` (two SAT
  maps, one-sided, Spearman) and `satlab.ensemble.stats` (predictor vs ensemble gain, two-sided).

Both take their randomness from a seeded `numpy.random.Generator`; the same seed gives the same numbers.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Iterator, NamedTuple

import numpy as np

ALTERNATIVES = ("greater", "two-sided")
TIE_TOL = 1e-12  # a permuted statistic this close to the observed one counts as reaching it


def bootstrap_weights(n_samples: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """How often each sample is drawn in each of `n_boot` resamples with replacement of `n_samples` samples.

    Args:
        n_samples: S, the number of samples (images) resampled.
        n_boot: B, the number of resamples.
        rng: the generator the draws come from (B x S integers, drawn row by row in one call).

    Returns:
        float32 [B, S]; each row sums to S. The counts are exact in float32 for S < 2^24.
    """
    draws = rng.integers(0, n_samples, size=(n_boot, n_samples)) + n_samples * np.arange(n_boot)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n_samples).reshape(n_boot, n_samples).astype(np.float32)


class MantelResult(NamedTuple):
    """p: the permutation p-value (NaN when the observed statistic is not finite or no permutation was run);
    observed: the statistic of the unpermuted matrix; permutations: how many were evaluated; exact: whether they
    were all n! permutations."""

    p: float
    observed: float
    permutations: int
    exact: bool


def _permutations(n_models: int, n_permutations: int, seed: int, exact: bool) -> Iterator[np.ndarray]:
    if exact:
        return (np.array(p) for p in itertools.permutations(range(n_models)))
    rng = np.random.default_rng(seed)
    return (rng.permutation(n_models) for _ in range(n_permutations))


def mantel_test(
    statistic: Callable[[np.ndarray], np.ndarray],
    matrix: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    n_permutations: int = 999,
    seed: int = 0,
    alternative: str = "greater",
    exact: bool = False,
    block: int | None = None,
) -> MantelResult:
    """Permutation p-value of a statistic of a matrix's pairs when its model labels are permuted (Mantel test).

    Each permutation p of the N models gives the pair values matrix[p[first], p[second]] (rows and columns
    permuted together); `statistic` compares them with whatever the caller holds fixed (another matrix's pairs,
    the ensemble gains). The observed statistic is that of the identity.

    Args:
        statistic: pair values [P, B] (one column per permutation) -> statistic [B]; NaN where undefined.
        matrix: [N, N] the matrix whose model labels are permuted.
        first, second: int [P], the pairs (matrix[first[i], second[i]] is pair i).
        n_permutations: random permutations to draw (uniform, from `numpy.random.default_rng(seed)`, one
            `Generator.permutation(N)` after another); fewer than 1: no test, p is NaN.
        seed: the generator's seed.
        alternative: "greater" counts permuted statistics >= the observed one; "two-sided" compares absolute
            values. Both with a tolerance of 1e-12, and a NaN permuted statistic never counts.
        exact: enumerate all N! permutations instead when N! <= n_permutations; the identity is one of them, so
            p = count / N!. Otherwise p = (1 + count) / (1 + n_permutations).
        block: permutations per call of `statistic` (None: all in one call). It bounds the memory to [P, block]
            pair values; a statistic that treats each column on its own gives the same numbers for any block.

    Returns:
        MantelResult(p, observed, permutations, exact).
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    matrix = np.asarray(matrix)
    observed = float(statistic(matrix[first, second][:, None])[0])
    if not np.isfinite(observed) or n_permutations < 1:
        return MantelResult(float("nan"), observed, 0, False)
    n = matrix.shape[0]
    exact = bool(exact) and math.factorial(n) <= n_permutations
    perms = _permutations(n, n_permutations, seed, exact)
    total = math.factorial(n) if exact else n_permutations
    stats = []
    for _ in range(0, total, block or total):
        chunk = np.stack(list(itertools.islice(perms, block or total)), axis=1)  # [N, b]
        stats.append(np.asarray(statistic(matrix[chunk[first], chunk[second]]), dtype=float))
    values = np.concatenate(stats)
    if alternative == "two-sided":
        count = int(np.sum(np.abs(values) >= abs(observed) - TIE_TOL))
    else:
        count = int(np.sum(values >= observed - TIE_TOL))
    p = count / total if exact else (1 + count) / (1 + total)
    return MantelResult(float(p), observed, total, exact)
