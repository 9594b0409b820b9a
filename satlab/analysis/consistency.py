"""Error consistency: Cohen's kappa between models' clean correctness vectors, and its agreement with SAT.

kappa(A, B) = (p_obs - p_exp) / (1 - p_exp), with p_obs the share of samples on which A and B are both right or
both wrong, and p_exp = p_A p_B + (1 - p_A)(1 - p_B) the agreement expected from their accuracies alone
(Geirhos et al., 2020, "error consistency").

The formula is 0 / 0 when p_exp = 1, which happens exactly when both models are always right, or both always
wrong, on the samples (then p_obs = 1 too). We set kappa = 1 there, the convention of Geirhos et al.'s own code
(model-vs-human, `error_consistency`: kappa = 1 whenever the observed agreement is 1): two models that agree on
every sample are perfectly consistent. In particular a model's kappa with itself is 1 by definition, also for a
model that is 100% (or 0%) correct. A model always right against one always wrong needs no convention: p_obs =
p_exp = 0, kappa = 0. Nothing is NaN unless there are no samples.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import spearmanr

from satlab.analysis.features import pair_targets


def kappa_from_agreement(p_obs: np.ndarray, p_exp: np.ndarray) -> np.ndarray:
    """Cohen's kappa from the observed and the expected agreement, elementwise (see the module docstring).

    Args:
        p_obs: float array, the share of samples both models get right or both get wrong.
        p_exp: float array of the same shape, p_A p_B + (1 - p_A)(1 - p_B).

    Returns:
        float array of that shape; 1 where p_exp = 1 (both models always right, or both always wrong).
    """
    p_obs, p_exp = np.asarray(p_obs, dtype=float), np.asarray(p_exp, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p_exp >= 1.0, 1.0, (p_obs - p_exp) / (1.0 - p_exp))


def kappa_matrix(correct: np.ndarray) -> np.ndarray:
    """Cohen's kappa for every pair of models (error consistency).

    Args:
        correct: bool [N, S], model n classifies sample s correctly.

    Returns:
        float [N, N], symmetric, diagonal exactly 1; 1 for two models both always right (or both always wrong),
        see the module docstring. All NaN when S = 0.
    """
    c = np.asarray(correct, dtype=float)
    n_samples = c.shape[1]
    if n_samples == 0:
        return np.full((c.shape[0], c.shape[0]), np.nan)
    both_right = c @ c.T / n_samples
    both_wrong = (1 - c) @ (1 - c).T / n_samples
    p_obs = both_right + both_wrong
    acc = c.mean(axis=1)
    p_exp = np.outer(acc, acc) + np.outer(1 - acc, 1 - acc)
    kappa = kappa_from_agreement(p_obs, p_exp)
    np.fill_diagonal(kappa, 1.0)
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
