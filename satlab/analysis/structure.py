"""Does a SAT map show architecture structure? Two numbers a user can read off any map with known families.

- same-family AUC: the probability that a same-family pair has a higher SAT than a cross-family pair (ties count
  half; the Mann-Whitney U statistic over unordered pairs, normalised). 0.5 = no structure, 1 = every same-family
  pair above every cross-family pair. On the paper's released ImageNet matrix (69 models, families = base
  architecture, matrix symmetrised) it is 0.81.
- twins' rank: where the pairs of one architecture trained twice (same architecture and arguments, other seed)
  sit among all pairs, 1 = the most similar pair of the map.

A pair without a value (NaN SAT: no sample both models classify correctly) says nothing about similarity: it is
left out of the AUC and of the ranking, and counted in the console line. When every same-family (or every
cross-family) pair is without a value, the AUC is undefined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Structure:
    """The structure numbers of one SAT map.

    same_family_auc: None when a side has no pair with a value (no pair at all, or only NaN pairs).
    n_same, n_cross: all same-family and cross-family pairs; missing_same, missing_cross: how many of them have
    no value (left out of the AUC and the ranking).
    twins: (model a, model b, rank of their SAT among the pairs with a value; 1 = highest; None without a value).
    n_pairs: all unordered pairs.
    """

    same_family_auc: float | None
    n_same: int
    n_cross: int
    twins: list[tuple[str, str, int | None]]
    n_pairs: int
    missing_same: int = 0
    missing_cross: int = 0

    def line(self) -> str:
        """One line for the console."""
        missing = self.missing_same + self.missing_cross
        if self.same_family_auc is not None:
            auc = f"{self.same_family_auc:.2f}"
        else:  # one side has no pair with a value
            side, total = ("same", self.n_same) if self.n_same == self.missing_same else ("cross", self.n_cross)
            auc = f"undefined (no {side}-family pair{' with a value' if total else ''})"
        text = f"same-family vs cross-family AUC {auc} ({self.n_same} vs {self.n_cross} pairs"
        text += f"; {missing} pair(s) without a value left out)" if missing else ")"
        if self.twins:
            text += f"; twins' rank of {self.n_pairs - missing} pairs: " + ", ".join(
                f"{a}/{b} {'no value' if rank is None else rank}" for a, b, rank in self.twins)
        return text


def pair_values(sat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, SAT) of the unordered off-diagonal pairs i < j: int [P], int [P], float [P] (NaN kept)."""
    i, j = np.triu_indices(len(sat), k=1)
    return i, j, np.asarray(sat, dtype=float)[i, j]


def family_pairs(sat: np.ndarray, families: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The SAT of the same-family pairs and of the cross-family pairs (NaN kept).

    Args:
        sat: [N, N] SAT matrix; only the pairs i < j are read.
        families: N family names, in the matrix order.
    """
    i, j, values = pair_values(sat)
    fam = np.asarray(families, dtype=object)
    same = fam[i] == fam[j]
    return values[same], values[~same]


def mann_whitney_auc(a: np.ndarray, b: np.ndarray) -> float | None:
    """P(a value of `a` > a value of `b`), ties counting half, over the finite values; None if a side has none."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not len(a) or not len(b):
        return None
    greater = (a[:, None] > b[None, :]).sum() + 0.5 * (a[:, None] == b[None, :]).sum()
    return float(greater / (len(a) * len(b)))


def family_auc(sat: np.ndarray, families: Sequence[str]) -> tuple[float | None, int, int]:
    """(AUC, number of same-family pairs, number of cross-family pairs); pairs without a value are counted but
    left out of the AUC, which is None when a side has no pair with a value (see `family_pairs`)."""
    same, cross = family_pairs(sat, families)
    return mann_whitney_auc(same, cross), int(len(same)), int(len(cross))


def pair_ranks(sat: np.ndarray) -> np.ndarray:
    """Rank of each pair's SAT among the unordered pairs with a value (1 = highest; ties share the best rank).

    Args:
        sat: [N, N] SAT matrix; only the pairs i < j are read.

    Returns:
        int [N, N], symmetric; 0 on the diagonal and for a pair without a value (NaN), which is not ranked.
    """
    i, j, values = pair_values(sat)
    ranks = np.zeros(np.shape(sat), dtype=int)
    order = np.where(np.isnan(values), 0, 1 + (values[None, :] > values[:, None]).sum(1))
    ranks[i, j] = ranks[j, i] = order
    return ranks


def structure(sat: np.ndarray, names: Sequence[str], families: Sequence[str],
              architectures: Sequence[str]) -> Structure:
    """Same-family AUC and the twins' ranks of a SAT map.

    Args:
        sat: [N, N] SAT matrix (NaN: a pair without a value).
        names, families, architectures: N entries each, in the matrix order; twins are models with equal
            `architectures` entries (e.g. timm name + arguments).
    """
    same, cross = family_pairs(sat, families)
    ranks = pair_ranks(sat)
    twins = [(names[a], names[b], int(ranks[a, b]) or None) for a in range(len(names))
             for b in range(a + 1, len(names)) if architectures[a] == architectures[b]]
    return Structure(mann_whitney_auc(same, cross), len(same), len(cross), twins, len(names) * (len(names) - 1) // 2,
                     int(np.isnan(same).sum()), int(np.isnan(cross).sum()))
