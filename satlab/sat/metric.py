"""The SAT formula and the quantities derived from per-sample transfer records. Pure NumPy, no framework.

Records (see `satlab.sat.records`): `correct[N,S]` (model n classifies sample s correctly) and `fooled[N,N,S]`
(the target misclassifies the source's adversarial example of s; False outside X_AB by convention).

    SAT(A,B) = ln( max( eps_s, 100 / (2|X_AB|) * sum_{x in X_AB} [ 1(A(x_B) != y) + 1(B(x_A) != y) ] ) )

with X_AB the samples both A and B classify correctly and x_A the adversarial example of x made on A.
"""

from __future__ import annotations

import warnings

import numpy as np

DEFAULT_EPS_S = 1e-8


def joint_correct(correct: np.ndarray) -> np.ndarray:
    """|X_AB| for every pair: the number of samples both models classify correctly, int [N,N]."""
    c = np.asarray(correct, dtype=np.int64)
    return c @ c.T


def fooled_counts(correct: np.ndarray, fooled: np.ndarray) -> np.ndarray:
    """For every (source, target): how many samples of X_AB the source's adversarial examples fool, int [N,N]."""
    correct = np.asarray(correct, dtype=bool)
    both = correct[:, None, :] & correct[None, :, :]
    return (np.asarray(fooled, dtype=bool) & both).sum(axis=-1)


def transfer_rates(correct: np.ndarray, fooled: np.ndarray) -> np.ndarray:
    """Asymmetric transfer rate in %: row = source, column = target, share of X_AB fooled. NaN where X_AB is empty.

    The diagonal is each model's white-box attack success rate on the samples it classifies correctly.
    """
    n_both = joint_correct(correct)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_both > 0, 100.0 * fooled_counts(correct, fooled) / np.maximum(n_both, 1), np.nan)


def sat_matrix(correct: np.ndarray, fooled: np.ndarray, eps_s: float = DEFAULT_EPS_S) -> np.ndarray:
    """The SAT matrix (natural log), symmetric by construction. NaN, with a warning, where X_AB is empty."""
    if eps_s <= 0:
        raise ValueError(f"eps_s must be > 0 (it floors the argument of the log), got {eps_s}")
    n_both = joint_correct(correct)
    counts = fooled_counts(correct, fooled)
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
