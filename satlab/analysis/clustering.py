"""Spectral clustering of models by SAT, the eigengap, and a 2-D map of the models. Pure NumPy/SciPy.

Affinity (the documented choice): SAT is a similarity on a log scale whose diagonal (a model against itself) is
not comparable with the off-diagonal, so it is first turned into a distance

    d(A, B) = max_{i != j} SAT(i, j) - SAT(A, B)   (clipped at 0; d(A, A) = 0)

and then into a Gaussian-kernel affinity  W = exp(-d^2 / (2 sigma^2))  with sigma the median off-diagonal
distance (`affinity="gaussian"`, default). `affinity="exp"` uses W = exp(SAT - max SAT) instead, i.e. the average
transfer rate relative to the most similar pair. The diagonal of W is 0; a NaN SAT (no jointly-correct
samples) gives W = 0 and the largest distance.

Clustering: the k leading eigenvectors of the symmetric normalised affinity D^-1/2 W D^-1/2 from a dense,
deterministic eigensolver, rescaled by D^-1/2 (the random-walk embedding, as scikit-learn's SpectralClustering
does), then scikit-learn's CLUSTER_QR assignment (Damle et al., 2019; `sklearn.cluster._spectral.cluster_qr`,
the function behind SpectralClustering(assign_labels="cluster_qr")), which has no random initialisation. The
labels therefore do not depend on any seed. The partition equals SpectralClustering(affinity="precomputed",
assign_labels="cluster_qr") on W (checked by the tests; that class computes the same eigenvectors with ARPACK,
which needs a random start, hence our own dense eigensolver, which also gives the eigengap). The labels are
renumbered 0, 1, ... by first appearance in the matrix order.
Number of clusters: `n_clusters`, or the eigengap of the normalised Laplacian L = I - D^-1/2 W D^-1/2: the k in
[2, max_clusters] that maximises lambda_{k+1} - lambda_k, among the k whose partition the map supports: at most
half of its clusters hold a single model (on a small map the largest gap is often at k = N - 1, which splits every
model off, the most similar pair included). When the largest gap is refused, the next largest is tried, and
`Clustering.note` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

AFFINITIES = ("gaussian", "exp")


def offdiag(matrix: np.ndarray) -> np.ndarray:
    """The off-diagonal entries of a square matrix as a flat array."""
    matrix = np.asarray(matrix, dtype=float)
    return matrix[~np.eye(matrix.shape[0], dtype=bool)]


def sat_distance(sat: np.ndarray) -> np.ndarray:
    """d = max off-diagonal SAT - SAT, clipped at 0, zero diagonal; NaN cells get the largest distance."""
    sat = np.asarray(sat, dtype=float)
    values = offdiag(sat)
    finite = values[np.isfinite(values)]
    top = finite.max() if finite.size else 0.0
    dist = np.clip(top - sat, 0.0, None)
    worst = np.nanmax(dist) if np.isfinite(dist).any() else 0.0
    dist = np.where(np.isfinite(dist), dist, worst)
    np.fill_diagonal(dist, 0.0)
    return dist


def sat_affinity(sat: np.ndarray, kind: str = "gaussian") -> np.ndarray:
    """The affinity matrix W used for spectral clustering (see the module docstring); zero diagonal."""
    sat = np.asarray(sat, dtype=float)
    if kind == "gaussian":
        dist = sat_distance(sat)
        sigma = float(np.median(offdiag(dist))) if sat.shape[0] > 1 else 1.0
        weights = np.exp(-(dist**2) / (2.0 * (sigma if sigma > 0 else 1.0) ** 2))
    elif kind == "exp":
        finite = offdiag(sat)[np.isfinite(offdiag(sat))]
        weights = np.exp(sat - (finite.max() if finite.size else 0.0))
    else:
        raise ValueError(f"unknown affinity '{kind}'; choose one of {AFFINITIES}")
    weights = np.where(np.isfinite(weights) & np.isfinite(sat), weights, 0.0)  # a NaN SAT links nothing
    weights = 0.5 * (weights + weights.T)
    np.fill_diagonal(weights, 0.0)
    return weights


def normalized_affinity(weights: np.ndarray) -> np.ndarray:
    """D^-1/2 W D^-1/2; a model with no affinity to any other gets 1 on the diagonal (its own component)."""
    degree = weights.sum(axis=1)
    isolated = degree <= 1e-300
    scale = 1.0 / np.sqrt(np.where(isolated, 1.0, degree))
    norm = weights * scale[:, None] * scale[None, :]
    norm[isolated, isolated] = 1.0
    return 0.5 * (norm + norm.T)


def eigengap(eigenvalues: np.ndarray, max_clusters: int = 20, min_clusters: int = 2) -> int:
    """The k in [min_clusters, max_clusters] with the largest gap eigenvalues[k] - eigenvalues[k-1] (ascending)."""
    n = len(eigenvalues)
    hi = min(max_clusters, n - 1)
    if hi < min_clusters:
        return max(1, min(min_clusters, n))
    ks = np.arange(min_clusters, hi + 1)
    gaps = eigenvalues[ks] - eigenvalues[ks - 1]
    return int(ks[int(np.argmax(gaps))])


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0, 1, ... in order of first appearance."""
    mapping: dict[int, int] = {}
    return np.array([mapping.setdefault(int(x), len(mapping)) for x in labels], dtype=int)


@dataclass
class Clustering:
    """Spectral clustering result: labels follow the matrix order of the models."""

    labels: np.ndarray
    n_clusters: int
    eigengap_k: int
    eigenvalues: np.ndarray
    affinity: str
    note: str = ""  # why the number of clusters differs from the eigengap's k, if it does


def spectral_clusters(
    sat: np.ndarray, n_clusters: int | None = None, max_clusters: int = 20, affinity: str = "gaussian"
) -> Clustering:
    """Cluster models from their SAT matrix (see the module docstring). Seed-free.

    Args:
        sat: [N, N] SAT matrix (NaN allowed: such a pair links nothing).
        n_clusters: k in [2, N - 1], or None for the eigengap's choice.
        max_clusters: the largest k the eigengap considers.
        affinity: "gaussian" or "exp" (`sat_affinity`).

    Returns:
        Clustering with labels int [N] (0, 1, ... by first appearance), k, the eigengap's k and the N eigenvalues
        of the normalised Laplacian (ascending).
    """
    from sklearn.cluster._spectral import cluster_qr  # scikit-learn >= 1.1

    sat = np.asarray(sat, dtype=float)
    n = sat.shape[0]
    if n_clusters is not None and not 2 <= n_clusters <= n - 1:
        raise ValueError(f"n_clusters={n_clusters} must be between 2 and the number of models - 1 ({n - 1})")
    weights = sat_affinity(sat, affinity)
    norm = normalized_affinity(weights)
    vals, vecs = scipy.linalg.eigh(norm)
    order = np.argsort(-vals, kind="stable")
    vals, vecs = vals[order], vecs[:, order]
    lap = 1.0 - vals
    k_gap = eigengap(lap, max_clusters)
    degree = weights.sum(axis=1)
    embedding = vecs / np.sqrt(np.where(degree > 1e-300, degree, 1.0))[:, None]  # random-walk eigenvectors

    def labels_of(k: int) -> np.ndarray:
        return np.zeros(n, dtype=int) if k == 1 else canonical_labels(cluster_qr(embedding[:, :k]))

    if n_clusters is not None:
        return Clustering(labels_of(int(n_clusters)), int(n_clusters), k_gap, lap, affinity)
    hi = min(max_clusters, n - 1)
    by_gap = sorted(range(2, hi + 1), key=lambda k: -(lap[k] - lap[k - 1])) if hi >= 2 else [k_gap]
    for k in by_gap:
        labels = labels_of(k)
        singletons = int((np.bincount(labels) == 1).sum())
        if 2 * singletons <= k or k == by_gap[-1]:
            break
    note = "" if k == k_gap else (f"the largest eigengap (k = {k_gap}) would leave most clusters with a single "
                                  f"model; k = {k} is the largest gap whose clusters the map supports")
    return Clustering(labels, k, k_gap, lap, affinity, note)


def cluster_order(labels: np.ndarray) -> np.ndarray:
    """Model indices sorted by cluster, keeping the matrix order inside a cluster."""
    return np.argsort(np.asarray(labels), kind="stable")


def classical_mds(dist: np.ndarray, dims: int = 2) -> np.ndarray:
    """Classical (Torgerson) MDS of a distance matrix -> coordinates [n, dims]; deterministic (signs fixed)."""
    dist = np.asarray(dist, dtype=float)
    n = dist.shape[0]
    centre = np.eye(n) - np.full((n, n), 1.0 / n)
    gram = -0.5 * centre @ (dist**2) @ centre
    vals, vecs = scipy.linalg.eigh(0.5 * (gram + gram.T))
    order = np.argsort(-vals, kind="stable")[:dims]
    coords = vecs[:, order] * np.sqrt(np.clip(vals[order], 0.0, None))
    if coords.shape[1] < dims:
        coords = np.pad(coords, ((0, 0), (0, dims - coords.shape[1])))
    for j in range(coords.shape[1]):  # sign convention: the largest-magnitude coordinate is positive
        if coords[np.argmax(np.abs(coords[:, j])), j] < 0:
            coords[:, j] *= -1
    return coords


MAPS = ("mds", "tsne")


def tsne_map(dist: np.ndarray, seed: int = 0, perplexity: float | None = None) -> np.ndarray:
    """t-SNE of a distance matrix (the paper's Fig. 1) -> coordinates [n, 2]; perplexity defaults to
    min(30, (n - 1) / 3). Seeded, so a run is reproducible; unlike MDS the axes carry no meaning."""
    from sklearn.manifold import TSNE

    dist = np.asarray(dist, dtype=float)
    n = dist.shape[0]
    perplexity = float(perplexity) if perplexity else max(1.0, min(30.0, (n - 1) / 3.0))
    tsne = TSNE(2, metric="precomputed", init="random", perplexity=min(perplexity, n - 1.0), random_state=seed)
    return tsne.fit_transform(dist)


def model_map(dist: np.ndarray, method: str = "mds", seed: int = 0) -> np.ndarray:
    """2-D coordinates of the models: classical MDS (deterministic) or t-SNE (seeded)."""
    if method not in MAPS:
        raise ValueError(f"map method must be one of {MAPS}, got {method!r}")
    return classical_mds(dist) if method == "mds" else tsne_map(dist, seed)
