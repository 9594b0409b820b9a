"""Figures of the ensemble study (matplotlib, Agg): gain vs SAT / kappa, and team accuracy vs team size."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from satlab.analysis.plots import save_figure, plt


def _stat(stats: pd.DataFrame, predictor: str) -> str:
    row = stats[(stats.predictor == predictor) & (stats.target == "gain_best") & (stats.method == "spearman")]
    if row.empty:
        return ""
    r = row.iloc[0]
    return f"Spearman rho = {r.r:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}], perm. p = {r.p_perm:.3f}"


def plot_gain_vs_sat(pairs: pd.DataFrame, stats: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    """Two scatter panels: gain over the better member vs SAT and vs kappa, with a least-squares line."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, column, label in zip(axes, ("sat", "kappa"), ("SAT (natural log)", "error consistency (kappa)")):
        x, y = pairs[column].to_numpy(float), 100.0 * pairs["gain_best"].to_numpy(float)
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=14, alpha=0.7, color="tab:blue", edgecolor="k", lw=0.2)
        if ok.sum() >= 2 and np.ptp(x[ok]) > 0:
            slope, intercept = np.polyfit(x[ok], y[ok], 1)
            grid = np.linspace(x[ok].min(), x[ok].max(), 50)
            ax.plot(grid, slope * grid + intercept, color="tab:red", lw=1.2, label="least squares")
            ax.legend(fontsize=8, loc="best")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel(label)
        ax.set_ylabel("pair ensemble gain over the better member (points)")
        ax.set_title(_stat(stats, column), fontsize=9)
    fig.suptitle(title or "Does similarity predict the ensemble gain?")
    return save_figure(fig, path)


def plot_teams(teams: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    """Team accuracy vs team size per strategy, with the random teams' 5-95 percentile band and median."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rand = teams[teams.strategy.str.startswith("random_p")]
    if len(rand):
        band = rand.pivot(index="k", columns="strategy", values="accuracy") * 100.0
        ax.fill_between(band.index, band["random_p05"], band["random_p95"], color="0.85", label="random 5-95%")
        ax.plot(band.index, band["random_p50"], color="0.4", ls="--", label="random median")
    for strategy, group in teams[~teams.strategy.str.startswith("random_p")].groupby("strategy", sort=False):
        ax.plot(group["k"], 100.0 * group["accuracy"], "o-", ms=4, label=strategy)
    ax.set_xlabel("team size k")
    ax.set_ylabel("ensemble accuracy (%)")
    ax.set_xticks(sorted(teams["k"].unique()))
    ax.set_title(title or "Teams by strategy")
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)
