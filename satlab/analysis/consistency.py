"""Error consistency: Cohen's kappa between models' clean correctness vectors, and its agreement with SAT.

kappa(A, B) = (p_obs - p_exp) / (1 - p_exp), with p_obs the share of samples on which A and B are both right or
both wrong, and p_exp = p_A p_B + (1 - p_A)(1 - p_B) the agreement expected from their accuracies alone
(Geirhos et al., 2020). Undefined (NaN) when p_exp = 1, i.e. both models are always right (or always wrong).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import spearmanr

from satlab.analysis.features import pair_targets


def kappa_matrix(correct: np.ndarray) -> np.ndarray:
    """Cohen's kappa for every pair of rows of a bool matrix correct[N, S] -> float [N, N] (NaN if undefined)."""
    c = np.asarray(correct, dtype=float)
    n_samples = c.shape[1]
    if n_samples == 0:
        return np.full((c.shape[0], c.shape[0]), np.nan)
    both_right = c @ c.T / n_samples
    both_wrong = (1 - c) @ (1 - c).T / n_samples
    p_obs = both_right + both_wrong
    acc = c.mean(axis=1)
    p_exp = np.outer(acc, acc) + np.outer(1 - acc, 1 - acc)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(np.isclose(p_exp, 1.0), np.nan, (p_obs - p_exp) / (1.0 - p_exp))
    return kappa


def align(models: Sequence[str], names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The models of `names` (matrix order) that `models` (records order) also has, and their rows in `models`."""
    where = {m: i for i, m in enumerate(models)}
    shared = [n for n in names if n in where]
    return shared, np.array([where[n] for n in shared], dtype=int)


def kappa_sat_correlation(kappa: np.ndarray, sat: np.ndarray) -> dict[str, float]:
    """Spearman rank correlation of off-diagonal kappa and SAT over the pairs where both are finite."""
    k, s = pair_targets(kappa), pair_targets(sat)
    ok = np.isfinite(k) & np.isfinite(s)
    n = int(ok.sum())
    if n < 3 or np.ptp(k[ok]) == 0 or np.ptp(s[ok]) == 0:
        return {"spearman_rho": float("nan"), "p_value": float("nan"), "n_pairs": n}
    rho, p = spearmanr(k[ok], s[ok])
    return {"spearman_rho": float(rho), "p_value": float(p), "n_pairs": n}
