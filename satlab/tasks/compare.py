"""task=compare: agreement of two SAT matrices on their common models (rank correlation of the pairs, a Mantel
p-value, the ARI of their clusterings), with a scatter plot and a report section.

Outputs in the run dir: comparison.json, comparison_pairs.csv, comparison_scatter.png, comparison.md,
summary.json.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from satlab.analysis.compare import comparison_section, compare_matrices, plot_comparison
from satlab.sat.records import read_matrix
from satlab.tasks.checks import check_section
from satlab.tasks.common import output_dir, write_summary
from satlab.utils import SatlabError, write_csv, write_json, write_text


def matrix_path(value: str | None, key: str) -> Path:
    """A matrix CSV, or a run dir holding sat_matrix.csv."""
    if not value:
        raise SatlabError(f"{key} is required: a sat_matrix.csv or a task=sat run dir ({key}=...)")
    path = Path(str(value)).expanduser()
    return path / "sat_matrix.csv" if path.is_dir() else path


def run(cfg: DictConfig) -> dict:
    """Compare `compare.a` with `compare.b`."""
    check_section(cfg, "compare")  # types and ranges (satlab.tasks.checks); the CLI checked them already
    params = cfg.compare
    path_a, path_b = matrix_path(params.a, "compare.a"), matrix_path(params.b, "compare.b")
    n_perm = params.n_permutations
    names_a, a = read_matrix(path_a, sat=True)
    names_b, b = read_matrix(path_b, sat=True)
    label_a, label_b = str(params.label_a), str(params.label_b)
    result = compare_matrices(names_a, a, names_b, b, n_perm, int(params.seed), params.n_clusters)
    out = output_dir(cfg)
    summary = {"a": str(path_a), "b": str(path_b), "label_a": label_a, "label_b": label_b, **result.summary()}
    pairs = pd.DataFrame({"model_a": [p[0] for p in result.pair_names], "model_b": [p[1] for p in result.pair_names],
                          f"sat_{label_a}": result.pairs_a, f"sat_{label_b}": result.pairs_b})
    write_csv(out / "comparison_pairs.csv", pairs)
    plot_comparison(result, out / "comparison_scatter.png", label_a, label_b)
    write_text(out / "comparison.md", comparison_section(result, label_a, label_b))
    write_json(out / "comparison.json", summary)
    write_summary(out, cfg, {}, comparison=summary)
    print(f"{label_a} vs {label_b}: {len(result.models)} common models, Spearman rho = {result.spearman:.3f}, "
          f"Kendall tau = {result.kendall:.3f} (Mantel p = {result.mantel_p:.3g}), ARI = {result.ari:.3f}")
    print(f"results in {out}")
    return summary
