"""Distillation results: per-teacher gains over the no-teacher baseline, their CIs, gain vs SAT, plot, report.

Gain CI: a paired t-interval over seeds (the baseline and each distilled student share seed, initial weights and
data order, so gain_s = acc_distilled_s - acc_baseline_s is paired per seed; df = seeds - 1).
Rank correlation of gain vs SAT: Spearman's rho over teachers with a 95% percentile bootstrap CI over teachers
(resampling teachers with replacement; resamples with a constant SAT or gain are skipped).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

COLUMNS = ("teacher", "sat_to_student", "teacher_accuracy", "student_accuracy_mean", "student_accuracy_std",
           "gain_mean", "gain_ci_low", "gain_ci_high", "seeds")


def paired_gain(baseline: Sequence[float], distilled: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of the per-seed differences distilled - baseline and its t-interval (NaN bounds for one seed)."""
    diff = np.asarray(distilled, float) - np.asarray(baseline, float)
    mean = float(diff.mean())
    if len(diff) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff)))
    return mean, mean - half, mean + half


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho, NaN when either side is constant or has fewer than 3 values."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def rank_correlation(x: Sequence[float], y: Sequence[float], n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Spearman's rho of y vs x with a percentile bootstrap CI over the (x, y) pairs."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    rho = spearman(x, y)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot if len(x) >= 3 else 0):
        idx = rng.integers(0, len(x), len(x))
        r = spearman(x[idx], y[idx])
        if not np.isnan(r):
            boots.append(r)
    lo, hi = (np.quantile(boots, [(1 - level) / 2, (1 + level) / 2]) if boots else (np.nan, np.nan))
    return {"rho": rho, "ci_low": float(lo), "ci_high": float(hi), "n": int(len(x)), "n_boot_used": len(boots)}


def results_table(teachers: Sequence[str], sat: Sequence[float], teacher_acc: Sequence[float],
                  student_acc: dict[str, Sequence[float]], baseline_acc: Sequence[float]) -> pd.DataFrame:
    """distill_results.csv: one row per teacher (accuracies as fractions, gains in accuracy points x 100)."""
    rows = []
    for name, s, ta in zip(teachers, sat, teacher_acc):
        acc = np.asarray(student_acc[name], float)
        gain, lo, hi = paired_gain(baseline_acc, acc)
        rows.append({"teacher": name, "sat_to_student": float(s), "teacher_accuracy": float(ta),
                     "student_accuracy_mean": float(acc.mean()),
                     "student_accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else float("nan"),
                     "gain_mean": 100 * gain, "gain_ci_low": 100 * lo, "gain_ci_high": 100 * hi, "seeds": len(acc)})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def answer(table: pd.DataFrame) -> dict[str, Any]:
    """The user's question: the most and the least SAT-similar teacher, their gains, and the best teacher."""
    by_sat = table.dropna(subset=["sat_to_student"]).sort_values("sat_to_student")
    pick = lambda row: {"teacher": row["teacher"], "sat": float(row["sat_to_student"]),  # noqa: E731
                        "gain": float(row["gain_mean"]), "ci": [float(row["gain_ci_low"]), float(row["gain_ci_high"])]}
    best = table.loc[table["gain_mean"].idxmax()]
    return {"most_similar": pick(by_sat.iloc[-1]) if len(by_sat) else None,
            "least_similar": pick(by_sat.iloc[0]) if len(by_sat) else None, "best": pick(best)}


def _gain_text(item: dict[str, Any]) -> str:
    return f"{item['teacher']} (SAT {item['sat']:.2f}): gain {item['gain']:+.2f} pp [{item['ci'][0]:+.2f}, {item['ci'][1]:+.2f}]"


def answer_lines(ans: dict[str, Any], corr: dict[str, float]) -> list[str]:
    """Console lines answering which teacher to use and whether SAT predicts the gain."""
    lines = []
    if ans["most_similar"]:
        lines.append(f"most SAT-similar teacher:  {_gain_text(ans['most_similar'])}")
        lines.append(f"least SAT-similar teacher: {_gain_text(ans['least_similar'])}")
    lines.append(f"best teacher:              {_gain_text(ans['best'])}")
    lines.append(f"Spearman rho(gain, SAT) over {corr['n']} teachers: {corr['rho']:+.2f} "
                 f"(95% bootstrap CI [{corr['ci_low']:+.2f}, {corr['ci_high']:+.2f}])")
    return lines


def plot_gain_vs_sat(table: pd.DataFrame, corr: dict[str, float], path: str | os.PathLike, student: str) -> Path:
    """gain_vs_sat.png: gain (with its CI) against SAT to the student, one labelled point per teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from satlab.analysis.plots import save_figure

    fig, ax = plt.subplots(figsize=(6, 4.5))
    err = np.vstack([table["gain_mean"] - table["gain_ci_low"], table["gain_ci_high"] - table["gain_mean"]])
    ax.errorbar(table["sat_to_student"], table["gain_mean"], yerr=np.nan_to_num(err), fmt="o", capsize=3)
    for _, row in table.iterrows():
        ax.annotate(row["teacher"], (row["sat_to_student"], row["gain_mean"]), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"SAT(teacher, {student}) (natural log)")
    ax.set_ylabel("gain over no-teacher baseline (accuracy points, 95% CI)")
    ax.set_title(f"Distillation into {student}: Spearman rho = {corr['rho']:.2f}")
    return save_figure(fig, path)


def report_section(table: pd.DataFrame, corr: dict[str, float], ans: dict[str, Any], student: str,
                   baseline: Sequence[float], reference: str) -> str:
    """The report.md section."""
    base = np.asarray(baseline, float)
    cols = ["teacher", "sat_to_student", "teacher_accuracy", "student_accuracy_mean", "student_accuracy_std",
            "gain_mean", "gain_ci_low", "gain_ci_high"]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = "".join("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |\n"
                   for row in table[cols].itertuples(index=False))
    return (
        f"## Distillation into {student}\n\n"
        f"Baseline (no teacher): accuracy {base.mean():.4f} +- {base.std(ddof=1) if len(base) > 1 else float('nan'):.4f} "
        f"over {len(base)} seeds. SAT to the student is measured against {reference}. Gains are in accuracy points "
        "with a paired t-interval over seeds.\n\n" + head + body + "\n"
        + "\n".join(f"- {line}" for line in answer_lines(ans, corr)) + "\n"
    )
