"""Figures of the analysis (matplotlib, Agg backend). Every function writes one PNG atomically and returns its path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from satlab.analysis.clustering import cluster_order  # noqa: E402
from satlab.utils import atomic_path  # noqa: E402

DPI = 120


def save_figure(fig, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def _colors(n: int):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(max(n, 1))]


def plot_importance(table: pd.DataFrame, path: str | os.PathLike, title: str = "Component importance") -> Path:
    """Horizontal bars of importance_mean +- importance_std, most important on top."""
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * max(len(table), 3) + 1.2))
    if len(table):
        rows = table.sort_values("rank", ascending=False)
        ax.barh(rows["component"], rows["importance_mean"], xerr=rows["importance_std"], color="tab:blue", capsize=2)
    else:
        ax.text(0.5, 0.5, "no informative component", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("permutation importance (drop in held-out R$^2$)")
    ax.set_title(title)
    ax.axvline(0, color="k", lw=0.6)
    return save_figure(fig, path)


def plot_cluster_heatmap(
    names: Sequence[str],
    sat: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike,
    floored: np.ndarray | None = None,
) -> Path:
    """SAT heatmap with models sorted by cluster and cluster boundaries drawn (floored cells marked)."""
    title = f"SAT sorted by cluster ({len(set(np.asarray(labels).tolist()))} clusters)"
    return plot_sat_heatmap(names, sat, path, title=title, labels=labels, floored=floored)


def plot_model_map(
    names: Sequence[str], coords: np.ndarray, labels: np.ndarray, path: str | os.PathLike, title: str = ""
) -> Path:
    """2-D map of the models (e.g. classical MDS of SAT distances), coloured by cluster, every point labelled."""
    k = int(np.max(labels)) + 1 if len(labels) else 1
    colors = _colors(k)
    fig, ax = plt.subplots(figsize=(9, 7.5))
    for c in range(k):
        pts = coords[labels == c]
        ax.scatter(pts[:, 0], pts[:, 1], color=colors[c], s=36, label=f"cluster {c}", edgecolor="k", lw=0.3)
    fontsize = max(4.0, min(9.0, 300.0 / max(len(names), 1)))
    for (x, y), name in zip(coords, names):
        ax.annotate(name, (x, y), fontsize=fontsize, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("MDS 1")
    ax.set_ylabel("MDS 2")
    ax.set_title(title or "Models by SAT distance (classical MDS)")
    ax.legend(fontsize=7, loc="best", ncol=2 if k > 6 else 1)
    return save_figure(fig, path)


def plot_eigenvalues(eigenvalues: np.ndarray, chosen: int, eigengap_k: int, path: str | os.PathLike) -> Path:
    """The smallest normalised-Laplacian eigenvalues with the eigengap's k and the k used."""
    m = min(len(eigenvalues), 25)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, m + 1), eigenvalues[:m], "o-", ms=4)
    ax.axvline(eigengap_k + 0.5, color="tab:red", ls="--", label=f"eigengap: k = {eigengap_k}")
    if chosen != eigengap_k:
        ax.axvline(chosen + 0.5, color="tab:green", ls=":", label=f"used: k = {chosen}")
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue of normalised Laplacian")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_kappa_vs_sat(kappa: np.ndarray, sat: np.ndarray, rho: float, path: str | os.PathLike) -> Path:
    """Scatter of off-diagonal error consistency (kappa) against SAT, one point per pair."""
    rows, cols = np.triu_indices(kappa.shape[0], k=1)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(np.asarray(sat)[rows, cols], kappa[rows, cols], s=10, alpha=0.7)
    ax.set_xlabel("SAT")
    ax.set_ylabel("Cohen's kappa (clean errors)")
    ax.set_title(f"Error consistency vs SAT (Spearman rho = {rho:.3f})")
    return save_figure(fig, path)


def plot_sat_heatmap(
    names: Sequence[str],
    sat: np.ndarray,
    path: str | os.PathLike,
    title: str = "SAT",
    labels: np.ndarray | None = None,
    floored: np.ndarray | None = None,
) -> Path:
    """The SAT matrix as a heatmap (diagonal hidden); with cluster `labels`, sorted by cluster with boundaries.

    Cells in the `floored` mask (0% transfer, ln eps_s) are left out of the colour scale and drawn in red, so one
    floor does not flatten the scale of every measured pair. Values are printed in the cells for small N.
    """
    n = len(names)
    order = cluster_order(labels) if labels is not None else np.arange(n)
    values = np.asarray(sat, dtype=float)[np.ix_(order, order)].copy()
    np.fill_diagonal(values, np.nan)  # the diagonal (white-box success, ~ln 100) would swamp the colour scale
    floors = np.zeros((n, n), bool) if floored is None else np.asarray(floored, bool)[np.ix_(order, order)]
    floors = floors & np.isfinite(values)
    values[floors] = np.nan
    size = min(max(4.0, 0.16 * n + 2.5), 16.0)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(values, cmap="viridis", interpolation="nearest")
    if floors.any():
        ax.imshow(np.where(floors, 1.0, np.nan), cmap=matplotlib.colors.ListedColormap(["tab:red"]),
                  interpolation="nearest", vmin=0, vmax=1)
        title += f"\n{int(np.triu(floors, 1).sum())} floored pair(s) (0% transfer) in red, not in the colour scale"
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="SAT = ln(transfer %), diagonal hidden")
    fontsize = max(3.0, min(9.0, 400.0 / max(n, 1)))
    ticks = [names[i] if labels is None else f"{names[i]} [{labels[i]}]" for i in order]
    ax.set_xticks(range(n), [names[i] for i in order], rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), ticks, fontsize=fontsize)
    if labels is not None:
        for b in np.flatnonzero(np.diff(np.asarray(labels)[order])) + 0.5:
            ax.axhline(b, color="w", lw=1.0)
            ax.axvline(b, color="w", lw=1.0)
    if n <= 16:
        for i in range(n):
            for j in range(n):
                if floors[i, j]:
                    ax.text(j, i, "0%", ha="center", va="center", fontsize=7, color="w")
                elif i != j and np.isfinite(values[i, j]):
                    color = "k" if im.norm(values[i, j]) > 0.6 else "w"  # readable on bright and dark cells
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color)
    ax.set_title(title)
    return save_figure(fig, path)
