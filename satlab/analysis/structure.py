"""Does a SAT map show architecture structure? Two numbers a user can read off any map with known families.

- same-family AUC: the probability that a same-family pair has a higher SAT than a cross-family pair (ties count
  half; the Mann-Whitney U statistic over unordered pairs, normalised). 0.5 = no structure, 1 = every same-family
  pair above every cross-family pair. On the paper's released ImageNet matrix (69 models, families = base
  architecture, matrix symmetrised) it is 0.81.
- twins' rank: where the pairs of one architecture trained twice (same architecture and arguments, other seed)
  sit among all pairs, 1 = the most similar pair of the map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Structure:
    same_family_auc: float | None  # None when there are no same-family or no cross-family pairs
    n_same: int
    n_cross: int
    twins: list[tuple[str, str, int]]  # (model a, model b, rank of their SAT among all pairs; 1 = highest)
    n_pairs: int

    def line(self) -> str:
        """One line for the console."""
        auc = "n/a" if self.same_family_auc is None else f"{self.same_family_auc:.2f}"
        text = f"same-family vs cross-family AUC {auc} ({self.n_same} vs {self.n_cross} pairs)"
        if self.twins:
            text += "; twins' rank of " + str(self.n_pairs) + " pairs: " + ", ".join(
                f"{a}/{b} {rank}" for a, b, rank in self.twins)
        return text


def pair_values(sat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, SAT) of the unordered off-diagonal pairs i < j."""
    i, j = np.triu_indices(len(sat), k=1)
    return i, j, np.asarray(sat, dtype=float)[i, j]


def family_auc(sat: np.ndarray, families: Sequence[str]) -> tuple[float | None, int, int]:
    """(AUC, number of same-family pairs, number of cross-family pairs); AUC None when either set is empty."""
    i, j, values = pair_values(sat)
    fam = np.asarray(families, dtype=object)
    same = fam[i] == fam[j]
    a, b = values[same], values[~same]
    if not len(a) or not len(b):
        return None, int(len(a)), int(len(b))
    greater = (a[:, None] > b[None, :]).sum() + 0.5 * (a[:, None] == b[None, :]).sum()
    return float(greater / (len(a) * len(b))), int(len(a)), int(len(b))


def pair_ranks(sat: np.ndarray) -> np.ndarray:
    """[N, N] rank of each pair's SAT among the unordered pairs (1 = highest; ties share the best rank)."""
    i, j, values = pair_values(sat)
    ranks = np.zeros(np.shape(sat), dtype=int)
    order = 1 + (values[None, :] > values[:, None]).sum(1)
    ranks[i, j] = ranks[j, i] = order
    return ranks


def structure(sat: np.ndarray, names: Sequence[str], families: Sequence[str],
              architectures: Sequence[str]) -> Structure:
    """Same-family AUC and the twins' ranks (twins: equal `architectures` entries, e.g. timm name + arguments)."""
    auc, n_same, n_cross = family_auc(sat, families)
    ranks = pair_ranks(sat)
    twins = [(names[a], names[b], int(ranks[a, b])) for a in range(len(names)) for b in range(a + 1, len(names))
             if architectures[a] == architectures[b]]
    return Structure(auc, n_same, n_cross, twins, len(names) * (len(names) - 1) // 2)
