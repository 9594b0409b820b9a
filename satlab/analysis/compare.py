"""Agreement of two SAT matrices (two datasets, attacks or model sets) on their common models. Pure NumPy/SciPy.

Pairs: the entries above the diagonal of each matrix symmetrised as (M + M^T) / 2 (satlab's SAT matrices are
symmetric already), restricted to the common models in the first matrix's order; a pair that is NaN in either
matrix is left out. Rank agreement: Spearman's rho and Kendall's tau-b of those pair values. Significance: a
Mantel test, which permutes the model labels of the second matrix (rows and columns together), so that the
dependence between pairs sharing a model is respected; p = (1 + #{rho_perm >= rho}) / (1 + #permutations), one
sided, exact (all n! permutations) when n! <= n_permutations. Cluster agreement: the adjusted Rand index of
the two spectral clusterings (`satlab.analysis.clustering`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.stats import kendalltau, spearmanr
from sklearn.metrics import adjusted_rand_score

from satlab.analysis.clustering import spectral_clusters
from satlab.sat.resample import mantel_test
from satlab.utils import SatlabError

MIN_MODELS = 3


@dataclass
class Comparison:
    models: list[str]
    pairs_a: np.ndarray
    pairs_b: np.ndarray
    pair_names: list[tuple[str, str]]
    spearman: float
    kendall: float
    mantel_p: float
    permutations: int
    exact: bool
    ari: float
    clusters_a: np.ndarray
    clusters_b: np.ndarray
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"models": self.models, "n_models": len(self.models), "n_pairs": int(len(self.pairs_a)),
                "spearman": self.spearman, "kendall": self.kendall, "mantel_p": self.mantel_p,
                "permutations": self.permutations, "exact": self.exact, "ari": self.ari,
                "clusters_a": self.clusters_a.tolist(), "clusters_b": self.clusters_b.tolist(),
                "only_a": self.only_a, "only_b": self.only_b}


def common(names_a: Sequence[str], a: np.ndarray, names_b: Sequence[str], b: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Both matrices restricted to their common models, in the order of `names_a`."""
    models = [n for n in names_a if n in set(names_b)]
    if len(models) < MIN_MODELS:
        raise SatlabError(f"the two matrices share {len(models)} model(s) ({', '.join(models) or 'none'}); comparing "
                          f"them needs at least {MIN_MODELS} (names must match exactly)")
    ia = [list(names_a).index(n) for n in models]
    ib = [list(names_b).index(n) for n in models]
    return models, np.asarray(a, float)[np.ix_(ia, ia)], np.asarray(b, float)[np.ix_(ib, ib)]


def upper_pairs(matrix: np.ndarray) -> np.ndarray:
    """Entries above the diagonal of (M + M^T) / 2, row by row."""
    sym = 0.5 * (matrix + matrix.T)
    return sym[np.triu_indices(len(sym), k=1)]


def _rho(x: np.ndarray, y: np.ndarray) -> float:
    keep = ~(np.isnan(x) | np.isnan(y))
    if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return float("nan")
    return float(spearmanr(x[keep], y[keep]).statistic)


def mantel(a: np.ndarray, b: np.ndarray, n_permutations: int = 999, seed: int = 0) -> tuple[float, int, bool]:
    """One-sided Mantel p-value of Spearman's rho between the pairs of `a` and `b` (permuting b's models).

    Args:
        a, b: [N, N] matrices over the same models in the same order (`common`).
        n_permutations: random permutations, or all N! of them when N! <= n_permutations (then exact).
        seed: the permutations' seed.

    Returns:
        (p, number of permutations evaluated, exact); (NaN, 0, False) when rho itself is undefined or
        n_permutations < 1. The test itself is `satlab.sat.resample.mantel_test`.
    """
    x = upper_pairs(a)
    first, second = np.triu_indices(len(b), k=1)
    result = mantel_test(lambda pairs: np.array([_rho(x, column) for column in pairs.T]), 0.5 * (b + b.T),
                         first, second, n_permutations, seed, alternative="greater", exact=True, block=256)
    return result.p, result.permutations, result.exact


def compare_matrices(names_a: Sequence[str], a: np.ndarray, names_b: Sequence[str], b: np.ndarray,
                     n_permutations: int = 999, seed: int = 0, n_clusters: int | None = None) -> Comparison:
    """Rank and cluster agreement of two SAT matrices on their common models."""
    models, sub_a, sub_b = common(names_a, a, names_b, b)
    pa, pb = upper_pairs(sub_a), upper_pairs(sub_b)
    keep = ~(np.isnan(pa) | np.isnan(pb))
    kendall = float(kendalltau(pa[keep], pb[keep]).statistic) if keep.sum() >= 3 else float("nan")
    p, count, exact = mantel(sub_a, sub_b, n_permutations, seed)
    k = None if n_clusters is None else min(int(n_clusters), len(models))
    ca = spectral_clusters(sub_a, k).labels
    cb = spectral_clusters(sub_b, k).labels
    iu = np.triu_indices(len(models), k=1)
    return Comparison(
        models=models, pairs_a=pa, pairs_b=pb, pair_names=[(models[i], models[j]) for i, j in zip(*iu)],
        spearman=_rho(pa, pb), kendall=kendall, mantel_p=p, permutations=count, exact=exact,
        ari=float(adjusted_rand_score(ca, cb)), clusters_a=ca, clusters_b=cb,
        only_a=[n for n in names_a if n not in set(models)], only_b=[n for n in names_b if n not in set(models)],
    )


def plot_comparison(result: Comparison, path, label_a: str = "A", label_b: str = "B"):
    """Scatter of the pairs' SAT in A against B, each point labelled with its pair."""
    from satlab.analysis.plots import save_figure, plt

    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(result.pairs_a, result.pairs_b, s=22, edgecolor="k", lw=0.3)
    if len(result.pairs_a) <= 60:
        for (x, y), (m, n) in zip(zip(result.pairs_a, result.pairs_b), result.pair_names):
            ax.annotate(f"{m}-{n}", (x, y), fontsize=5, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel(f"SAT ({label_a})")
    ax.set_ylabel(f"SAT ({label_b})")
    ax.set_title(f"{len(result.models)} models: Spearman {result.spearman:.3f}, Kendall {result.kendall:.3f}, "
                 f"Mantel p {result.mantel_p:.3g}", fontsize=9)
    return save_figure(fig, path)


def comparison_section(result: Comparison, label_a: str = "A", label_b: str = "B") -> str:
    """A markdown report section."""
    test = "exact, all permutations" if result.exact else f"{result.permutations} permutations"
    lines = [
        f"## Comparison: {label_a} vs {label_b}", "",
        f"{len(result.models)} common models, {len(result.pairs_a)} pairs.", "",
        "| statistic | value |", "|---|---|",
        f"| Spearman rho (pairs) | {result.spearman:.4f} |",
        f"| Kendall tau-b (pairs) | {result.kendall:.4f} |",
        f"| Mantel p (one-sided, {test}) | {result.mantel_p:.4g} |",
        f"| ARI of the spectral clusterings | {result.ari:.4f} |", "",
        "| model | cluster in " + label_a + " | cluster in " + label_b + " |", "|---|---|---|",
        *[f"| {m} | {a} | {b} |" for m, a, b in zip(result.models, result.clusters_a, result.clusters_b)],
    ]
    if result.only_a or result.only_b:
        lines += ["", f"Left out (not in both): {', '.join(result.only_a + result.only_b)}."]
    return "\n".join(lines) + "\n"
