"""Summary statistics of a SAT matrix and the Markdown report of an analysis run (`report.md`)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from satlab.analysis.clustering import Clustering
from satlab.analysis.features import pair_index
from satlab.analysis.importance import Importance

AFFINITY_TEXT = {
    "gaussian": "Gaussian kernel W = exp(-d^2 / (2 sigma^2)) on the distance d = max off-diagonal SAT - SAT, "
    "sigma = median off-diagonal distance",
    "exp": "W = exp(SAT - max off-diagonal SAT), the average transfer rate relative to the most similar pair",
}


def matrix_summary(
    names: Sequence[str],
    sat: np.ndarray,
    top: int = 5,
    floored: np.ndarray | None = None,
    ci: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Off-diagonal statistics of a symmetric SAT matrix and its `top` most / least similar pairs, each pair with
    its `floored` flag and, given `ci` = (low, high) matrices, its bootstrap CI."""
    rows, cols = pair_index(len(names))
    vals = np.asarray(sat, dtype=float)[rows, cols]
    ok = np.flatnonzero(np.isfinite(vals))
    order = ok[np.lexsort((cols[ok], rows[ok], -vals[ok]))]  # descending SAT, ties by matrix order
    floors = np.zeros(len(vals), bool) if floored is None else np.asarray(floored, bool)[rows, cols]
    nan = np.full(len(vals), np.nan)
    low, high = (nan, nan) if ci is None else (np.asarray(ci[0])[rows, cols], np.asarray(ci[1])[rows, cols])

    def pairs(idx: np.ndarray) -> list[dict[str, Any]]:
        return [{"a": names[rows[i]], "b": names[cols[i]], "sat": float(vals[i]), "floored": bool(floors[i]),
                 "ci_low": float(low[i]), "ci_high": float(high[i])} for i in idx]

    finite = vals[ok]
    stat = (lambda f: float(f(finite)) if finite.size else float("nan"))
    return {
        "n_models": len(names),
        "n_pairs": int(len(vals)),
        "n_nan_pairs": int(len(vals) - len(ok)),
        "n_floored_pairs": int(floors.sum()),
        "median": stat(np.median),
        "mean": stat(np.mean),
        "min": stat(np.min),
        "max": stat(np.max),
        "most_similar": pairs(order[:top]),
        "least_similar": pairs(order[::-1][:top]),
    }


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A DataFrame as a Markdown table (no extra dependency)."""
    def cell(v: Any) -> str:
        return format(v, floatfmt) if isinstance(v, (float, np.floating)) else str(v).replace("|", "\\|")

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    sep = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def cluster_members(clusters: pd.DataFrame) -> list[tuple[int, list[str], str]]:
    """(cluster, members, families summary) per cluster, from a frame with columns model, cluster, family."""
    out = []
    for c, group in clusters.groupby("cluster", sort=True):
        fams = group["family"].value_counts()
        out.append((int(c), list(group["model"]), ", ".join(f"{f} x{n}" for f, n in fams.items())))
    return out


def importance_caution(r2: float, n_pairs: int) -> str:
    """A warning when the importance ranking carries little information ('' when it is fine)."""
    if r2 <= 0:
        return (f"the components do not predict SAT on held-out pairs (R^2 = {r2:.3f} <= 0, {n_pairs} pairs): "
                "this ranking is not meaningful; more models give more pairs.")
    if n_pairs < 100:
        return f"only {n_pairs} model pairs: read the ranking as indicative."
    return ""


def floors_section(floors: Mapping[str, Any], shown: int = 20) -> list[str]:
    """Report lines on floored pairs (0% transfer): how many, which, and what the analyses use instead."""
    pairs = floors["pairs"]
    if not pairs:
        return [f"No pair is floored (every pair's SAT is above ln eps_s = {np.log(floors['eps_s']):.2f}).", ""]
    listed = ", ".join(f"{a} / {b}" for a, b in pairs[:shown]) + (f" and {len(pairs) - shown} more"
                                                                   if len(pairs) > shown else "")
    return [f"**{len(pairs)} floored pair(s)** (no transfer observed: SAT = ln eps_s = {np.log(floors['eps_s']):.2f} "
            f"in the matrix): {listed}. The analyses below (statistics, importance, clusters, map) use "
            f"{floors['rule']} instead; the heatmaps draw them in red outside the colour scale.", ""]


def ci_text(stats: Mapping[str, Any], ci_info: Mapping[str, Any]) -> str:
    """One paragraph on the bootstrap CIs: what they are and whether the top pairs are resolved."""
    if not ci_info.get("n_boot"):
        return f"95% CIs: not computed ({ci_info.get('reason', 'no records')})."
    most, least = stats["most_similar"], stats["least_similar"]
    text = (f"95% CIs: percentile bootstrap over the {ci_info['n_samples']} images of the records "
            f"({ci_info['n_boot']} resamples, seed {ci_info['seed']}); for a floored pair, from the floor to the "
            "rule-of-three bound.")

    def overlap(p: Mapping[str, Any], q: Mapping[str, Any]) -> bool:
        return max(p["ci_low"], q["ci_low"]) <= min(p["ci_high"], q["ci_high"])

    if most and least and np.isfinite(most[0]["ci_low"]) and np.isfinite(least[0]["ci_low"]):
        text += (f" The most similar pair's CI {'overlaps' if overlap(most[0], least[0]) else 'does not overlap'} "
                 "the least similar pair's.")
    if len(most) > 1 and np.isfinite(most[0]["ci_low"]) and np.isfinite(most[1]["ci_low"]):
        text += (" The CIs of the first and second most similar pairs "
                 + ("overlap: these images do not resolve their order." if overlap(most[0], most[1])
                    else "do not overlap."))
    return text


def build_report(
    *,
    matrix_path: str,
    stats: Mapping[str, Any],
    importance: Importance,
    dropped: Mapping[str, str],
    clustering: Clustering,
    clusters: pd.DataFrame,
    kappa: Mapping[str, Any] | None,
    figures: Mapping[str, str],
    command: str,
    config_yaml: str,
    metadata_source: str,
    floors: Mapping[str, Any],
    ci_info: Mapping[str, Any],
) -> str:
    """The Markdown text of `report.md`; `figures` maps a title to a path relative to the report."""
    lines = ["# SAT matrix analysis", "", f"Matrix: `{matrix_path}` ({stats['n_models']} models, "
             f"{stats['n_pairs']} pairs). Component metadata: {metadata_source}.", ""]

    lines += ["## Summary statistics (off-diagonal SAT)", "",
              f"median {stats['median']:.4f}, mean {stats['mean']:.4f}, min {stats['min']:.4f}, "
              f"max {stats['max']:.4f}" + (f"; {stats['n_nan_pairs']} pairs are NaN" if stats["n_nan_pairs"] else ""),
              ""]
    lines += floors_section(floors)
    floor = np.log(floors["eps_s"]) + 1e-6

    def ci_cell(v: float) -> str:
        return "0% (floor)" if v <= floor else "" if not np.isfinite(v) else f"{v:.4f}"

    for key, title in (("most_similar", "Most similar pairs"), ("least_similar", "Least similar pairs")):
        frame = pd.DataFrame(stats[key], columns=["a", "b", "sat", "ci_low", "ci_high", "floored"])
        frame[["ci_low", "ci_high"]] = frame[["ci_low", "ci_high"]].map(ci_cell)
        frame["floored"] = frame["floored"].map({True: "yes", False: ""})
        frame = frame.rename(columns={"a": "model A", "b": "model B", "sat": "SAT", "ci_low": "95% CI low",
                                      "ci_high": "95% CI high"})
        lines += [f"**{title}**", "", markdown_table(frame), ""]
    lines += [ci_text(stats, ci_info), ""]

    lines += ["## Component importance", ""]
    if importance.note:
        lines += [f"Not computed: {importance.note}.", ""]
    else:
        top = ", ".join(importance.table["component"].head(3))
        lines += [f"Top components: **{top}**.", ""]
        if caution := importance_caution(importance.r2["ensemble_mean"], importance.n_pairs):
            lines += [f"**Caution:** {caution}", ""]
        lines += [
            f"Regression of pair SAT on per-component pair features ({importance.n_pairs} pairs, "
            f"{importance.n_test} held out per seed). Held-out R^2: {importance.model} "
            f"{importance.r2['ensemble_mean']:.3f} +- {importance.r2['ensemble_std']:.3f}, ridge (linear) "
            f"{importance.r2['linear_mean']:.3f} +- {importance.r2['linear_std']:.3f}. Importance = drop in held-out "
            "R^2 when the component's feature is permuted (mean +- std over seeds and repeats).", "",
            markdown_table(importance.table), "",
            "Linear model (ridge) for comparison:", "",
            markdown_table(importance.linear_table), "",
        ]
    if dropped:
        lines += ["Components left out: " + "; ".join(f"{c} ({why})" for c, why in dropped.items()) + ".", ""]

    lines += ["## Spectral clustering", "",
              f"Affinity: {AFFINITY_TEXT.get(clustering.affinity, clustering.affinity)}; zero diagonal. "
              "Labels from the leading eigenvectors of the normalised affinity with CLUSTER_QR (no random "
              "initialisation: the clusters do not depend on the seed), numbered by first appearance in the "
              "matrix order.", "",
              f"Clusters: **{clustering.n_clusters}** (the eigengap suggests {clustering.eigengap_k}; the paper used "
              "10, `analyze.n_clusters=10`)." + (f" Why not {clustering.eigengap_k}: {clustering.note}."
                                                   if clustering.note else ""), ""]
    members = cluster_members(clusters)
    lines += markdown_table(pd.DataFrame(
        [(c, len(m), fams, ", ".join(m)) for c, m, fams in members],
        columns=["cluster", "size", "families", "members"])).splitlines() + [""]

    lines += ["## Error consistency", ""]
    if kappa:
        lines += [f"Cohen's kappa between clean-correctness vectors of {kappa['n_models']} models on "
                  f"{kappa['n_samples']} samples (`kappa_matrix.csv`). Spearman correlation of off-diagonal kappa "
                  f"with SAT: rho = {kappa['spearman_rho']:.4f} (p = {kappa['p_value']:.3g}, "
                  f"{kappa['n_pairs']} pairs).", ""]
    else:
        lines += ["Not computed: no `records.npz` next to the matrix (pass `analyze.records=...`).", ""]

    lines += ["## Figures", ""]
    for title, rel in figures.items():
        lines += [f"### {title}", "", f"![{title}]({rel})", ""]

    lines += ["## Reproduce", "", "```bash", command, "```", "", "<details><summary>Resolved config</summary>", "",
              "```yaml", config_yaml.rstrip(), "```", "", "</details>", ""]
    return "\n".join(lines)
