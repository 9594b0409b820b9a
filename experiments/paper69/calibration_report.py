"""Which attack setting reproduces the scale of the SAT paper's released matrix?

Reads a calibration sweep (`satlab -m experiment=paper69_calibration ...`: one run dir per setting, each with
sat_matrix.csv and summary.json) and the paper's released SAT_release.csv, and compares, setting by setting:

- pair transfer: exp(SAT) off the diagonal (the rate of fooled images on X_AB, both directions pooled), over
  the pairs of models both matrices hold (all released pairs when fewer than 3 models are shared);
- white-box success: exp(SAT) on the diagonal, over the shared models (all released models otherwise);

with quantiles (10/25/50/75/90 %), the two-sample Kolmogorov-Smirnov distance of each, and, when models are
shared, the paired view: Spearman rank correlation of pair SAT and the median |SAT - SAT_released|.
Settings are ranked by KS(pair transfer) + KS(white-box): the lowest is the closest to the paper's scale.

    python experiments/paper69/calibration_report.py multirun/sat/2026-01-01_12-00-00 \
        --reference /path/to/SAT_release.csv

Writes calibration.csv and calibration.md into --out (default: the sweep dir) and prints the table.
The reference defaults to $SATLAB_SAT_REFERENCE, else ../shared/reference/sat-official/SAT_release.csv next to
the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from satlab.analysis.report import markdown_table
from satlab.sat.records import read_matrix
from satlab.utils import SatlabError, atomic_path, write_text

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "sat-official" / "SAT_release.csv"
QUANTILES = (0.10, 0.25, 0.50, 0.75, 0.90)


def default_reference() -> Path:
    return Path(os.environ.get("SATLAB_SAT_REFERENCE") or DEFAULT_REFERENCE)


def find_runs(sweep_dir: Path) -> list[Path]:
    """Run dirs under `sweep_dir` (any depth) that hold both sat_matrix.csv and summary.json, in name order."""
    runs = sorted(p.parent for p in Path(sweep_dir).rglob("sat_matrix.csv") if (p.parent / "summary.json").is_file())
    if not runs:
        raise SatlabError(f"no run with sat_matrix.csv and summary.json under '{sweep_dir}': pass a multirun dir")
    return runs


def upper_pairs(names: list[str], sat: np.ndarray, keep: list[str]) -> dict[tuple[str, str], float]:
    """SAT of each unordered pair of `keep` (in `keep` order), NaN dropped."""
    index = {n: i for i, n in enumerate(names)}
    pairs = {}
    for a in range(len(keep)):
        for b in range(a + 1, len(keep)):
            value = sat[index[keep[a]], index[keep[b]]]
            if np.isfinite(value):
                pairs[(keep[a], keep[b])] = float(value)
    return pairs


def diagonal(names: list[str], sat: np.ndarray, keep: list[str]) -> np.ndarray:
    values = np.array([sat[names.index(n), names.index(n)] for n in keep])
    return values[np.isfinite(values)]


def _quantiles(prefix: str, values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {f"{prefix}_q{round(q * 100)}": float("nan") for q in QUANTILES}
    return {f"{prefix}_q{round(q * 100)}": float(np.quantile(values, q)) for q in QUANTILES}


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.ks_2samp(a, b).statistic) if len(a) and len(b) else float("nan")


def compare(run: tuple[list[str], np.ndarray], ref: tuple[list[str], np.ndarray]) -> dict[str, float]:
    """Distributions of a run's pair transfer and white-box success against the released matrix's (in %)."""
    names, sat = run
    ref_names, ref_sat = ref
    shared = [n for n in names if n in set(ref_names)]
    paired = len(shared) >= 3
    ref_keep = shared if paired else ref_names
    run_pairs = upper_pairs(names, sat, names)
    ref_pairs = upper_pairs(ref_names, ref_sat, ref_keep)
    transfer, ref_transfer = np.exp(list(run_pairs.values())), np.exp(list(ref_pairs.values()))
    white, ref_white = np.exp(diagonal(names, sat, names)), np.exp(diagonal(ref_names, ref_sat, ref_keep))
    row = {"models": len(names), "shared_models": len(shared), "pairs": len(run_pairs), "ref_pairs": len(ref_pairs)}
    row |= {"ks_transfer": _ks(transfer, ref_transfer), "ks_whitebox": _ks(white, ref_white)}
    row["score"] = row["ks_transfer"] + row["ks_whitebox"]
    row |= _quantiles("transfer", transfer) | _quantiles("ref_transfer", ref_transfer)
    row |= _quantiles("whitebox", white) | {"ref_whitebox_min": float(ref_white.min()) if len(ref_white) else np.nan}
    both = [p for p in run_pairs if p in ref_pairs or p[::-1] in ref_pairs]
    if paired and len(both) >= 3:
        ours = np.array([run_pairs[p] for p in both])
        theirs = np.array([ref_pairs.get(p, ref_pairs.get(p[::-1])) for p in both])
        row["spearman_pairs"] = float(stats.spearmanr(ours, theirs).statistic)
        row["median_abs_sat_diff"] = float(np.median(np.abs(ours - theirs)))
    else:
        row["spearman_pairs"] = row["median_abs_sat_diff"] = float("nan")
    return row


def setting(run_dir: Path) -> dict[str, object]:
    """The attack a run used, as recorded (the budget actually used, after any snapping)."""
    attack = json.loads((run_dir / "summary.json").read_text())["attack"]
    return {"run": run_dir.name, "attack": attack["name"], "eps": attack["eps"], "eps_255": attack["eps"] * 255,
            "steps": attack["steps"], "alpha": attack["alpha"]}


def calibration_table(sweep_dir: Path, reference: Path) -> pd.DataFrame:
    """One row per run of the sweep, closest to the released matrix first."""
    ref = read_matrix(reference, symmetric_tol=1e-6)
    rows = [setting(d) | compare(read_matrix(d / "sat_matrix.csv"), ref) for d in find_runs(sweep_dir)]
    return pd.DataFrame(rows).sort_values(["score", "run"], na_position="last").reset_index(drop=True)


def markdown(table: pd.DataFrame, reference: Path) -> str:
    """A short report: the reference's scale, the table, the closest setting."""
    first = table.iloc[0]
    cols = ["run", "attack", "eps_255", "steps", "score", "ks_transfer", "ks_whitebox", "transfer_q50",
            "ref_transfer_q50", "transfer_q10", "transfer_q90", "whitebox_q10", "whitebox_q50", "spearman_pairs"]
    lines = [
        "# Attack calibration against the released SAT matrix",
        "",
        f"Reference: `{reference}`. Pair transfer = exp(SAT) off the diagonal, white-box = exp(SAT) on it (%).",
        f"Released, on the pairs compared: median pair transfer {first['ref_transfer_q50']:.1f} %, 10-90 % "
        f"{first['ref_transfer_q10']:.1f}-{first['ref_transfer_q90']:.1f} %; "
        f"white-box min {first['ref_whitebox_min']:.1f} %.",
        "",
        markdown_table(table[cols], floatfmt=".3g"),
        "",
        f"Closest (lowest KS(transfer) + KS(white-box)): run {first['run']}, {first['attack']} eps = "
        f"{first['eps_255']:.3g}/255, {int(first['steps'])} steps (score {first['score']:.3f}).",
    ]
    if first["shared_models"] < 3:
        lines.append("The runs share fewer than 3 models with the reference: distributions are compared unpaired, "
                     "against all released pairs.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="the multirun dir of experiment=paper69_calibration")
    parser.add_argument("--reference", type=Path, default=None, help="SAT_release.csv of the paper")
    parser.add_argument("--out", type=Path, default=None, help="where calibration.csv/.md go (default: sweep_dir)")
    args = parser.parse_args(argv)
    reference = args.reference or default_reference()
    try:
        if not reference.is_file():
            raise SatlabError(f"the released matrix is not at '{reference}': pass --reference /path/to/SAT_release.csv "
                              "(from github.com/J-H-Hwang/SAT) or set SATLAB_SAT_REFERENCE")
        table = calibration_table(args.sweep_dir, reference)
    except SatlabError as err:
        print(f"calibration_report: error: {err}", file=sys.stderr)
        return 2
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "calibration.csv") as tmp:
        table.to_csv(tmp, index=False)
    text = markdown(table, reference)
    write_text(out / "calibration.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
