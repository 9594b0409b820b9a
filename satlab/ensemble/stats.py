"""Does a pair measure (SAT, error consistency) predict the ensemble gain? Correlations with honest uncertainty.

- Point estimates: Spearman and Pearson correlation over the pairs where both values are finite.
- 95% CI: percentile bootstrap over IMAGES. Each resample reweights the S images (multinomial counts), recomputes
  every model's and every pair ensemble's accuracy, hence every gain (the better member is re-chosen), and kappa
  (an image-level quantity); SAT, computed elsewhere, stays fixed.
- p-value: a permutation test over MODEL LABELS (a Mantel test): the predictor matrix's rows and columns are
  permuted together and the correlation with the (fixed) gains recomputed; pairs that share a model are not
  independent, so permuting pairs would overstate significance. Two-sided: p = (1 + #|r_perm| >= |r|)/(1 + n_perm).

Both resampling schemes are `satlab.sat.resample`'s (the same ones as the SAT CIs and `task=compare`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from satlab.analysis.consistency import kappa_from_agreement, kappa_matrix
from satlab.sat.resample import bootstrap_weights, mantel_test

METHODS = ("spearman", "pearson")
TARGETS = ("gain_best", "gain_mean")


def resampled_accuracy(hits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Accuracy of each row of hits [R, S] under each resample of weights [B, S] -> [R, B]."""
    return hits.astype(np.float32) @ weights.T / np.float32(hits.shape[1])


def gains(ensemble_acc: np.ndarray, member_acc: np.ndarray, first: np.ndarray, second: np.ndarray) -> dict:
    """gain_best (over the better member) and gain_mean (over the members' mean); works row- or column-wise."""
    a, b = member_acc[first], member_acc[second]
    return {"gain_best": ensemble_acc - np.maximum(a, b), "gain_mean": ensemble_acc - 0.5 * (a + b)}


def resampled_kappa(model_hits: np.ndarray, first: np.ndarray, second: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Cohen's kappa of every pair under every resample -> [P, B], with `kappa_matrix`'s convention (1 for two
    models that are both always right, or both always wrong, in a resample).

    Args:
        model_hits: bool [N, S], model n classifies image s correctly.
        first, second: int [P], the pairs.
        weights: float32 [B, S], the resamples' draw counts (`bootstrap_weights`).
    """
    both = resampled_accuracy(model_hits[first] & model_hits[second], weights).astype(float)
    acc = resampled_accuracy(model_hits, weights).astype(float)
    pa, pb = acc[first], acc[second]
    p_obs = 2.0 * both + 1.0 - pa - pb
    p_exp = pa * pb + (1.0 - pa) * (1.0 - pb)
    return kappa_from_agreement(p_obs, p_exp)


def _pearson_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    den = np.sqrt((x**2).sum(axis=0) * (y**2).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (x * y).sum(axis=0) / np.where(den > 0, den, 1.0), np.nan)


def column_corr(x: np.ndarray, y: np.ndarray, method: str) -> np.ndarray:
    """Correlation of x[:, b] with y[:, b] for every column b (1-D inputs broadcast) over finite rows -> [B]."""
    x, y = np.broadcast_arrays(np.asarray(x, float).reshape(len(x), -1), np.asarray(y, float).reshape(len(y), -1))
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.all():
        if method == "spearman":
            x, y = rankdata(x, axis=0), rankdata(y, axis=0)
        return _pearson_columns(x, y)
    out = np.full(x.shape[1], np.nan)
    for b in range(x.shape[1]):
        keep = ok[:, b]
        if keep.sum() >= 3:
            out[b] = column_corr(x[keep, b], y[keep, b], method)[0]
    return out


def permutation_pvalue(target: np.ndarray, matrix: np.ndarray, first: np.ndarray, second: np.ndarray,
                       method: str, n_perm: int, seed: int) -> float:
    """Two-sided Mantel p of corr(target, matrix[first, second]) when the matrix's model labels are permuted.

    Args:
        target: [P] the fixed pair values (the gains).
        matrix: [N, N] the predictor (SAT or kappa), whose rows and columns are permuted together.
        first, second: int [P], the pairs.
        method: "spearman" or "pearson".
        n_perm, seed: random permutations and their seed (`satlab.sat.resample.mantel_test`); n_perm < 1: NaN.
    """
    return mantel_test(lambda pairs: column_corr(pairs, target, method), matrix, first, second, n_perm, seed,
                       alternative="two-sided").p


def correlation_table(pair_hits: np.ndarray, model_hits: np.ndarray, first: np.ndarray, second: np.ndarray,
                      sat: np.ndarray, n_boot: int = 1000, n_perm: int = 1000, seed: int = 0,
                      level: float = 0.95) -> pd.DataFrame:
    """One row per (predictor in sat/kappa, target in gain_best/gain_mean, method): r, CI, permutation p."""
    s = pair_hits.shape[1]
    ones = np.ones((1, s), dtype=np.float32)
    point = gains(resampled_accuracy(pair_hits, ones)[:, 0], resampled_accuracy(model_hits, ones)[:, 0], first, second)
    weights = bootstrap_weights(s, n_boot, np.random.default_rng(seed))
    boot = gains(resampled_accuracy(pair_hits, weights), resampled_accuracy(model_hits, weights), first, second)
    kappa = kappa_matrix(model_hits)
    predictors = {"sat": (np.asarray(sat, float), np.asarray(sat, float)[first, second]),
                  "kappa": (kappa, resampled_kappa(model_hits, first, second, weights))}
    tail = 100.0 * (1.0 - level) / 2.0
    rows = []
    for name, (matrix, resampled) in predictors.items():
        values = matrix[first, second]
        for target in TARGETS:
            for method in METHODS:
                r = column_corr(values, point[target], method)[0]
                r_boot = column_corr(resampled, boot[target], method)
                finite = r_boot[np.isfinite(r_boot)]
                low, high = np.percentile(finite, [tail, 100.0 - tail]) if finite.size else (np.nan, np.nan)
                rows.append({
                    "predictor": name, "target": target, "method": method, "r": float(r),
                    "ci_low": float(low), "ci_high": float(high),
                    "p_perm": permutation_pvalue(point[target], matrix, first, second, method, n_perm, seed + 1),
                    "n_pairs": int((np.isfinite(values) & np.isfinite(point[target])).sum()),
                    "n_boot": int(finite.size), "n_perm": int(n_perm),
                })
    return pd.DataFrame(rows)
