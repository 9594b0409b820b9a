"""The ensemble section of report.md and the console headline, from the result tables."""

from __future__ import annotations

from typing import Any

import pandas as pd

from satlab.analysis.report import markdown_table


def headline(stats: pd.DataFrame, teams: pd.DataFrame) -> list[str]:
    """One line per predictor (Spearman of gain vs predictor, CI, p) and one per team size (SAT's team vs random)."""
    lines = []
    for _, r in stats[(stats.target == "gain_best") & (stats.method == "spearman")].iterrows():
        lines.append(f"{r.predictor:>5} vs gain over the better member: Spearman rho = {r.r:+.3f} "
                     f"[95% CI {r.ci_low:+.3f}, {r.ci_high:+.3f}], permutation p = {r.p_perm:.3f} "
                     f"({r.n_pairs} pairs)")
    median = teams[teams.strategy == "random_p50"].set_index("k")["accuracy"]
    for _, r in teams[teams.strategy == "sat_diverse"].iterrows():
        versus = (f"random median {100 * median[r.k]:.2f}% (SAT's team at percentile {r.random_percentile:.0f})"
                  if r.k in median.index else "no random teams")
        lines.append(f"k={r.k}: SAT-diverse team {r.members.replace(';', ', ')}: {100 * r.accuracy:.2f}% vs {versus}")
    return lines


def ensemble_section(info: dict[str, Any], models: pd.DataFrame, pairs: pd.DataFrame, stats: pd.DataFrame,
                     teams: pd.DataFrame, figures: dict[str, str]) -> str:
    """Markdown: setup, models, does SAT predict the gain, teams, figures."""
    shown = pairs.sort_values("gain_best", ascending=False)
    cols = ["model_a", "model_b", "accuracy", "gain_best", "gain_mean", "disagreement", "sat", "kappa"]
    parts = [
        "## Ensembles: which models to combine",
        f"Data: {info['data']} ({info['samples']} images). Combine rule: `{info['combine']}`. "
        f"SAT matrix: `{info['sat_source']}`. Gains are in accuracy (fraction), over the better member "
        "(`gain_best`) and over the members' mean (`gain_mean`). Member accuracy is measured on the same images.",
        "### Models", markdown_table(models),
        "### Does SAT predict the gain?",
        "Spearman/Pearson over pairs; 95% CI: bootstrap over images (gains and kappa recomputed, SAT fixed); "
        "p: permutation of model labels (Mantel test). A negative r means: the more similar, the smaller the gain.",
        markdown_table(stats.drop(columns=["n_perm"])),
        f"### Pairs (best {min(10, len(shown))} and worst {min(5, len(shown))} by gain; all in ensemble_pairs.csv)",
        markdown_table(pd.concat([shown.head(10), shown.tail(5)])[cols].drop_duplicates()),
        "### Teams at equal size",
        "`random_pNN`: percentiles over random teams (each column separately); `random_percentile`: where a "
        "strategy's accuracy falls among the random teams.",
        markdown_table(teams.drop(columns=["nll", "ece"])),
    ]
    parts += [f"![{name}]({file})" for name, file in figures.items()]
    return "\n\n".join(parts) + "\n"
