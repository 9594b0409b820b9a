"""Matrices without information, and floored cells (0% transfer, SAT = ln eps_s) kept from dominating analyses.

A floored cell says "no transfer was observed on X_AB", not "SAT = ln 1e-8 = -18.4": that number is the eps_s
floor of the formula, 20 log units below any measured pair, and it would dominate distances, the model map,
the clusters and a heatmap's colour scale. Analyses therefore replace a floored cell by

    min( ln(300 / (2|X_AB|)),  lowest non-floored off-diagonal SAT )

- ln(300 / (2|X_AB|)) is the rule-of-three 95% upper bound of a rate with 0 events in 2|X_AB| trials (in %):
  the most similar the pair can be given what was observed, so the analysis never makes a pair look more
  different than the data show. It needs |X_AB|, from the records; without records only the second term applies.
- the lowest non-floored SAT caps it: a pair with no observed transfer is never more similar than a pair where
  transfer was observed (with a small |X_AB| the bound alone could be).

`sat_matrix.csv` keeps the paper's definition (the eps_s floor); only analyses and plots use this treatment.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from satlab.analysis.clustering import offdiag
from satlab.sat.metric import zero_rate_bound


def no_information(sat: np.ndarray, floored: np.ndarray) -> str:
    """Why a SAT matrix carries nothing to analyse ('' when it is fine): an inf cell, every off-diagonal cell NaN
    or floored, or one value off the diagonal."""
    sat = np.asarray(sat, dtype=float)
    if np.isinf(sat).any():
        i, j = np.argwhere(np.isinf(sat))[0]
        return f"cell ({i + 1}, {j + 1}) is {sat[i, j]}; SAT is finite (a 0% pair is ln eps_s, a missing one NaN)"
    values, floors = offdiag(sat), offdiag(np.asarray(floored, dtype=float)) > 0
    finite = np.isfinite(values)
    if not finite.any():
        return "every off-diagonal cell is NaN (no pair has a jointly correct sample)"
    if floors[finite].all():
        return "every off-diagonal cell is floored at ln eps_s (no transfer was observed between any pair)"
    if np.ptp(values[finite]) == 0:
        return f"every off-diagonal cell is {values[finite][0]:.6g}: a constant matrix says nothing about which " \
               "models are alike"
    return ""


def floor_values(sat: np.ndarray, floored: np.ndarray, n_joint: np.ndarray | None = None) -> np.ndarray:
    """The SAT matrix analyses use: floored off-diagonal cells replaced as in the module docstring."""
    sat = np.asarray(sat, dtype=float)
    floored = np.asarray(floored, dtype=bool) & ~np.eye(len(sat), dtype=bool)
    if not floored.any():
        return sat.copy()
    measured = offdiag(np.where(floored, np.nan, sat))
    cap = np.nanmin(measured) if np.isfinite(measured).any() else np.inf
    bound = np.full(sat.shape, np.inf)
    if n_joint is not None:
        bound = np.nan_to_num(np.log(zero_rate_bound(n_joint)), nan=np.inf)
    return np.where(floored, np.minimum(bound, cap), sat)


def floored_pairs(names: Sequence[str], floored: np.ndarray) -> list[tuple[str, str]]:
    """The model pairs (i < j, matrix order) whose SAT is floored."""
    rows, cols = np.nonzero(np.triu(np.asarray(floored, dtype=bool), k=1))
    return [(names[i], names[j]) for i, j in zip(rows, cols)]


def describe(sat: np.ndarray, floored: np.ndarray, with_n_joint: bool) -> str:
    """The replacement rule in words, with the cap's value."""
    measured = offdiag(np.where(np.asarray(floored, dtype=bool), np.nan, np.asarray(sat, dtype=float)))
    cap = f"{np.nanmin(measured):.4f}" if np.isfinite(measured).any() else "none"
    if with_n_joint:
        return (f"min(ln(300 / (2|X_AB|)), lowest non-floored SAT = {cap}) (the rule-of-three 95% upper bound of "
                "a rate with no event, |X_AB| from the records)")
    return f"the lowest non-floored SAT ({cap}; without records |X_AB| is unknown, so no rule-of-three bound)"
