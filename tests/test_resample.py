"""satlab.sat.resample: the one bootstrap over images and the one Mantel test, and the callers that share them.

The pinned numbers were computed with the two implementations each caller had before they were merged (issue 14):
the same seeds must keep giving the same CIs and p-values.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import spearmanr

from satlab.analysis import compare
from satlab.ensemble import stats
from satlab.sat import metric
from satlab.sat.resample import bootstrap_weights, mantel_test


def _pairs_problem(rng, n, noise):
    """A symmetric [n, n] matrix, its pairs (first, second) and fixed pair values: its own plus Gaussian noise."""
    m = rng.random((n, n))
    m = m + m.T
    first, second = np.triu_indices(n, 1)
    return m, first, second, m[first, second] + rng.normal(0, noise, len(first))


def test_bootstrap_weights_count_the_seeded_draws():
    weights = bootstrap_weights(13, 40, np.random.default_rng(5))
    assert weights.shape == (40, 13) and weights.dtype == np.float32
    assert (weights.sum(axis=1) == 13).all() and (weights == np.round(weights)).all()
    draws = np.random.default_rng(5).integers(0, 13, size=(40, 13))  # row b: the images drawn in resample b
    assert np.array_equal(weights, np.stack([np.bincount(row, minlength=13) for row in draws]))
    assert np.array_equal(weights, bootstrap_weights(13, 40, np.random.default_rng(5)))
    assert not np.array_equal(weights, bootstrap_weights(13, 40, np.random.default_rng(6)))


def test_sat_and_ensemble_statistics_share_one_implementation():
    assert metric.bootstrap_weights is stats.bootstrap_weights is bootstrap_weights
    assert stats.mantel_test is compare.mantel_test is mantel_test


def test_numbers_are_those_of_the_former_implementations():
    rng = np.random.default_rng(11)
    correct = rng.random((3, 30)) < 0.8
    fooled = rng.random((3, 3, 30)) < 0.3
    low, high = metric.sat_bootstrap(correct, fooled, n_boot=200, seed=4, chunk=64)
    assert (low[0, 1], high[0, 1]) == (2.6572040855884556, 3.68960417509079)
    assert (low[1, 2], high[1, 2]) == (2.973598653078079, 3.8580250442028046)
    m, f, s, target = _pairs_problem(rng, 7, noise=1.2)
    assert stats.permutation_pvalue(target, m, f, s, "spearman", 300, 5) == 14 / 301
    assert stats.permutation_pvalue(target, m, f, s, "pearson", 300, 5) == 8 / 301
    assert stats.permutation_pvalue(-target, m, f, s, "spearman", 300, 5) == 14 / 301  # two-sided
    b = m + rng.normal(0, 0.6, (7, 7))
    assert compare.mantel(m, b, 300, seed=5) == (5 / 301, 300, False)
    assert compare.mantel(m[:5, :5], b[:5, :5], 300, seed=5) == (6 / 120, 120, True)  # 5! <= 300: exact


def _spearman_columns(fixed):
    return lambda pairs: np.array([spearmanr(fixed, column).statistic for column in pairs.T])


def test_mantel_exact_counts_every_permutation_of_the_labels():
    m, f, s, fixed = _pairs_problem(np.random.default_rng(2), 5, noise=0.2)
    statistic = _spearman_columns(fixed)
    result = mantel_test(statistic, m, f, s, n_permutations=120, exact=True)
    # the oracle: a plain loop over the 120 relabellings, each permuting rows and columns together
    observed = spearmanr(fixed, m[f, s]).statistic
    perm = [spearmanr(fixed, m[np.ix_(p, p)][f, s]).statistic for p in map(list, itertools.permutations(range(5)))]
    count = sum(r >= observed - 1e-12 for r in perm)
    assert result.exact and result.permutations == 120 and result.observed == pytest.approx(observed)
    assert result.p == count / 120 and 1 <= count < 120  # the identity is one of them
    assert mantel_test(statistic, m, f, s, n_permutations=119, exact=True).exact is False  # 5! > 119: random


def test_mantel_random_permutations_blocks_and_alternatives():
    m, f, s, fixed = _pairs_problem(np.random.default_rng(3), 8, noise=0.5)
    statistic = _spearman_columns(fixed)
    whole = mantel_test(statistic, m, f, s, n_permutations=200, seed=9)
    assert not whole.exact and whole.permutations == 200 and 0 < whole.p < 1
    count = round(whole.p * 201) - 1
    assert whole.p == (1 + count) / 201
    for block in (1, 7, 500):  # memory bound only: same p
        assert mantel_test(statistic, m, f, s, n_permutations=200, seed=9, block=block).p == whole.p
    negated = mantel_test(_spearman_columns(-fixed), m, f, s, n_permutations=200, seed=9)
    assert negated.observed == pytest.approx(-whole.observed) and negated.p > 0.9  # one-sided: the wrong tail
    two_sided = mantel_test(_spearman_columns(-fixed), m, f, s, n_permutations=200, seed=9, alternative="two-sided")
    assert two_sided.p >= whole.p and two_sided.p == mantel_test(
        statistic, m, f, s, n_permutations=200, seed=9, alternative="two-sided").p


def test_mantel_without_a_test():
    m = np.arange(16.0).reshape(4, 4)
    f, s = np.triu_indices(4, 1)
    statistic = _spearman_columns(np.arange(6.0))
    none = mantel_test(statistic, m, f, s, n_permutations=0)
    assert np.isnan(none.p) and none.permutations == 0
    undefined = mantel_test(lambda pairs: np.full(pairs.shape[1], np.nan), m, f, s)
    assert np.isnan(undefined.p) and undefined.permutations == 0
    with pytest.raises(ValueError, match="alternative"):
        mantel_test(statistic, m, f, s, alternative="less")
