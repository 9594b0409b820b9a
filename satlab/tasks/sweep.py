"""Sweep overviews: one table per Hydra multirun (`satlab -m ...`), beside its jobs.

A sweep folder (`multirun/<task>/<time>_<hex>/`) holds one folder per job. Each job leaves there Hydra's
`.hydra/overrides.yaml` (its overrides), the task's `summary.json` (its results) and, when it ends,
`job_status.json` (ok / bad input / crashed, with the message; written by `satlab.cli`). `write_overview`
rebuilds `sweep_overview.csv` and `sweep_overview.md` in the sweep folder from these files alone: one row per
job, the swept overrides as columns, the job's headline results, its status and its folder. Every job calls it
when it ends, whichever launcher ran it (Hydra's basic launcher runs the jobs in one process; submitit runs them
on other machines that share the folder), and the command calls it once more when the sweep is over. The
rebuild runs under a file lock and each file is replaced atomically, so a reader never sees half a table and
the last job to end writes a table with every finished job.

A job without `job_status.json` is `unfinished`: still running, waiting in a queue, or killed (a time limit).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import yaml
from hydra.experimental.callback import Callback

from satlab.tasks.cluster import quiet_slurm_polls
from satlab.utils import file_lock, write_csv, write_json, write_text

STATUS_FILE = "job_status.json"
OVERVIEW = "sweep_overview"  # .csv and .md in the sweep folder
STATUSES = ("ok", "bad input", "crashed", "unfinished")


class SweepCallback(Callback):
    """Hydra callback (`hydra.callbacks.satlab_sweep` in conf/config.yaml): records, in the process that starts a
    sweep, where the sweep folder is, whichever launcher runs the jobs (submitit runs them in other processes), so
    `satlab.cli` can write the final overview and report the failed jobs. `started` is that folder (None: no
    sweep has started in this process since `satlab.cli.main` reset it); on SLURM, quiet job-state polls."""

    started: Path | None = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """Record the sweep folder (`config.hydra.sweep.dir`, resolved once: the jobs copy its value).

        Args:
            config: the multirun's config; kwargs: what else Hydra passes (unused).
        """
        SweepCallback.started = Path(str(config.hydra.sweep.dir))
        quiet_slurm_polls(config.hydra.launcher)


def write_job_status(job_dir: str | Path, job: int, status: str, message: str = "") -> Path:
    """Record how a sweep job ended, in `<job_dir>/job_status.json`.

    Args:
        job_dir: the job's folder (Hydra's `runtime.output_dir`).
        job: the job's number in the sweep (Hydra's `job.num`).
        status: "ok", "bad input" (a `satlab: error:` line) or "crashed" (an unexpected exception).
        message: the error line for a failed job ("" when ok).

    Returns the file's path.
    """
    if status not in STATUSES[:3]:
        raise ValueError(f"status must be one of {STATUSES[:3]}, got {status!r}")
    return write_json(Path(job_dir) / STATUS_FILE, {"job": int(job), "status": status, "message": message,
                                                    "ended": time.strftime("%Y-%m-%d %H:%M:%S")})


def clear_job_status(job_dir: str | Path) -> None:
    """Remove a job's `job_status.json` left by an earlier sweep into the same folder (the job starts again).

    Args:
        job_dir: the job's folder.
    """
    (Path(job_dir) / STATUS_FILE).unlink(missing_ok=True)


def job_dirs(sweep_dir: str | Path) -> list[Path]:
    """The job folders of a sweep: folders below `sweep_dir` that hold `.hydra/overrides.yaml`, outermost only
    (a task's own sub-folders are part of its job), outside hidden folders (submitit's `.submitit/`).

    Args:
        sweep_dir: the sweep folder.
    """
    root = Path(sweep_dir)
    found: list[Path] = []
    for marker in sorted(root.rglob(".hydra/overrides.yaml"), key=lambda p: len(p.parts)):
        job = marker.parent.parent
        rel = job.relative_to(root).parts
        if not rel or any(part.startswith(".") for part in rel):
            continue
        if not any(parent in found for parent in job.parents):
            found.append(job)
    return found


def _read_yaml(path: Path) -> Any:
    """The YAML file at `path` (Hydra's `.hydra/*.yaml`, `multirun.yaml`); None when missing or unreadable.

    Args:
        path: the file.
    """
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at `path`; None when missing, unreadable or not an object (a job still writing it).

    Args:
        path: the file.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def parse_override(text: str) -> tuple[str, str]:
    """(key, value) of one override as Hydra writes it (`attack.eps=0.1`, `+x=1`, `~y`, `dataset@a=digits`).

    The key loses Hydra's `+`, `++` and `~` prefixes; the value is the text after the first `=` ("" for a
    deletion). The sweep override `seed=0,1` gives ("seed", "0,1").

    Args:
        text: the override.
    """
    key, _, value = str(text).partition("=")
    return key.lstrip("+~"), value


def sweep_overrides(sweep_dir: str | Path) -> list[str]:
    """The keys the command line swept (`a=1,2`, `range(...)`, `choice(...)`, globs), in its order, from Hydra's
    `multirun.yaml` in the sweep folder; [] when it is missing.

    Args:
        sweep_dir: the sweep folder.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    config = _read_yaml(Path(sweep_dir) / "multirun.yaml")
    try:
        task = config["hydra"]["overrides"]["task"] or []
        parsed = OverridesParser.create().parse_overrides([str(o) for o in task])
    except (TypeError, KeyError, HydraException):
        return []
    return [parse_override(o.input_line)[0] for o in parsed if o.is_sweep_override()]


def _number(value: Any, digits: int = 4) -> float | None:
    """A finite float rounded to `digits` decimals; None for anything else.

    Args:
        value: what a summary holds; digits: decimals kept.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _mean(values: Any, digits: int = 4) -> float | None:
    """The mean of a mapping's (or list's) finite numbers, rounded; None when there is none.

    Args:
        values: e.g. per-model accuracies {model: value}; digits: decimals kept.
    """
    items = values.values() if isinstance(values, Mapping) else values if isinstance(values, list) else []
    finite = [float(v) for v in items if _number(v) is not None]
    return round(float(np.mean(finite)), digits) if finite else None


def _get(summary: Mapping[str, Any], dotted: str) -> Any:
    """`summary["a"]["b"]` for `dotted` "a.b"; None when a level is missing.

    Args:
        summary: a parsed summary.json (or Hydra config); dotted: the key path.
    """
    node: Any = summary
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def sat_headline(summary: Mapping[str, Any], job_dir: Path) -> dict[str, Any]:
    """A task=sat job's headline: the SAT range (min / median / max of the off-diagonal pairs with a value, read
    from its `sat_matrix.csv`), pairs without a value, floored pairs, the structure numbers, mean clean accuracy
    and mean white-box success (%), the number of images; a shard's sources, a tile's sources x targets.

    Args:
        summary: the job's `summary.json`.
        job_dir: its folder (where `sat_matrix.csv` is).
    """
    if summary.get("shard") is not None:
        return {"shard": ", ".join(summary["shard"])}
    if summary.get("tile") is not None:
        tile = summary["tile"]
        return {"tile": f"{', '.join(tile['sources'])} x {', '.join(tile['targets'])}"}
    row: dict[str, Any] = {}
    values = _pair_values(job_dir / "sat_matrix.csv")
    if values is not None:
        finite = values[np.isfinite(values)]
        if len(finite):
            row.update(sat_min=round(float(finite.min()), 3), sat_median=round(float(np.median(finite)), 3),
                       sat_max=round(float(finite.max()), 3))
        row["pairs_without_value"] = int((~np.isfinite(values)).sum())
    row["floored_pairs"] = len(summary.get("floored_pairs") or [])
    row["same_family_auc"] = _number(_get(summary, "structure.same_family_auc"), 3)
    twins = _get(summary, "structure.twins_rank") or []
    row["twins_rank"] = "; ".join(f"{a}/{b} {'no value' if rank is None else rank}" for a, b, rank in twins)
    row["clean_accuracy"] = _mean(summary.get("clean_accuracy"))
    row["whitebox_success"] = _mean(summary.get("whitebox_success"), 2)
    row["samples"] = summary.get("samples")
    return row


def _pair_values(path: Path) -> np.ndarray | None:
    """The off-diagonal pairs (i < j) of a written SAT matrix; None when it cannot be read.

    Args:
        path: a job's `sat_matrix.csv`.
    """
    from satlab.sat.records import read_matrix
    from satlab.utils import SatlabError

    if not path.is_file():
        return None
    try:
        _, sat = read_matrix(path)
    except SatlabError:
        return None
    return sat[np.triu_indices(len(sat), k=1)]


# The headline of the other tasks: column -> dotted key in summary.json (a mean where the value is a mapping).
HEADLINES: dict[str, dict[str, str]] = {
    "analyze": {"n_models": "n_models", "n_clusters": "clusters.n_clusters", "r2": "importance.r2.ensemble_mean",
                "kappa_rho": "kappa.spearman_rho", "sat_median": "matrix_stats.median"},
    "ensemble": {"samples": "samples", "accuracy": "accuracy"},
    "distill": {"baseline_accuracy": "baseline_accuracy", "rho_gain_sat": "rank_correlation.rho"},
    "train": {"mode": "mode"},
    "compare": {"n_models": "comparison.n_models", "spearman": "comparison.spearman",
                "mantel_p": "comparison.mantel_p", "ari": "comparison.ari"},
    "cross_dataset": {"n_models": "comparison.n_models", "spearman": "comparison.spearman",
                      "mantel_p": "comparison.mantel_p", "ari": "comparison.ari"},
}


def headline(summary: Mapping[str, Any], job_dir: Path) -> dict[str, Any]:
    """The headline results of one job from its `summary.json` (task=sat: `sat_headline`; other tasks: the
    numbers of `HEADLINES`; an unknown task: none).

    Args:
        summary: the job's `summary.json`.
        job_dir: its folder.
    """
    task = str(summary.get("task", ""))
    if task == "sat":
        return sat_headline(summary, job_dir)
    row: dict[str, Any] = {}
    for column, key in HEADLINES.get(task, {}).items():
        value = _get(summary, key)
        if isinstance(value, Mapping):
            value = _mean(value)
        row[column] = value if isinstance(value, str) else _number(value)
    if task == "ensemble" and summary.get("headline"):
        row["headline"] = str(summary["headline"][0])
    if task == "distill" and _get(summary, "answer"):
        row["answer"] = str(_get(summary, "answer"))
    if task == "train":
        row["test_accuracy"] = _mean([m.get("test_accuracy") for m in (summary.get("models") or {}).values()
                                      if isinstance(m, Mapping)])
    return row


def job_row(job_dir: Path) -> dict[str, Any]:
    """One job's row: number, overrides (as written under "_raw", as a {key: value} mapping under "_overrides"),
    status, message, headline results, folder.

    Args:
        job_dir: the job's folder.
    """
    status = _read_json(job_dir / STATUS_FILE) or {}
    summary = _read_json(job_dir / "summary.json")
    overrides = _read_yaml(job_dir / ".hydra" / "overrides.yaml") or []
    num = status.get("job")
    if num is None and job_dir.name.isdigit():
        num = int(job_dir.name)
    if num is None:
        num = _get(_read_yaml(job_dir / ".hydra" / "hydra.yaml") or {}, "hydra.job.num")
    overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
    row: dict[str, Any] = {"job": num, "_raw": overrides, "_overrides": dict(parse_override(o) for o in overrides),
                           "status": status.get("status", "unfinished"), "message": status.get("message", "")}
    if summary is not None and row["status"] == "ok":
        row.update(headline(summary, job_dir))
    row["run"] = str(job_dir)
    return row


def overview(sweep_dir: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """The sweep's table (one row per job, sorted by job number) and the overrides every job shares.

    Columns: job, the swept overrides (those the command line swept, and any other whose value differs between
    jobs), status, the headline results, message, run.

    Args:
        sweep_dir: the sweep folder (Hydra's `hydra.sweep.dir`).
    """
    rows = [job_row(d) for d in job_dirs(sweep_dir)]
    rows.sort(key=lambda r: (r["job"] is None, r["job"] if isinstance(r["job"], int) else 0, r["run"]))
    keys: list[str] = list(dict.fromkeys(sweep_overrides(sweep_dir)))
    for row in rows:
        for key in row["_overrides"]:
            values = {r["_overrides"].get(key) for r in rows}
            if len(values) > 1 and key not in keys:
                keys.append(key)
    shared = {k: v for k, v in rows[0]["_overrides"].items() if k not in keys} if rows else {}
    fixed = ("job", "_raw", "_overrides", "status", "message", "run")
    results = list(dict.fromkeys(c for r in rows for c in r if c not in fixed))
    table = pd.DataFrame([{"job": r["job"], **{k: r["_overrides"].get(k, "") for k in keys},
                           "status": r["status"], **{c: r.get(c) for c in results},
                           "message": r["message"], "run": r["run"]} for r in rows],
                         columns=["job", *keys, "status", *results, "message", "run"])
    return table.convert_dtypes(), shared  # counts stay integers next to empty cells


def markdown(table: pd.DataFrame, sweep_dir: str | Path, shared: Mapping[str, str]) -> str:
    """The overview as a Markdown page: the sweep folder, job counts per status, the shared overrides, the table.

    Args:
        table: `overview`'s table.
        sweep_dir: the sweep folder (shown in the heading).
        shared: the overrides every job shares.
    """
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    lines = [f"# Sweep overview: `{sweep_dir}`", "",
             f"{len(table)} job(s): " + ", ".join(f"{counts[s]} {s}" for s in STATUSES if s in counts)
             + f" (updated {time.strftime('%Y-%m-%d %H:%M:%S')})", ""]
    if shared:
        lines += ["Every job: `" + " ".join(f"{k}={v}" if v else k for k, v in shared.items()) + "`", ""]
    columns = [str(c) for c in table.columns]
    lines += ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_cell(v) for v in row.tolist()) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    """One Markdown table cell: numbers to 4 significant digits, missing values empty, `|` escaped.

    Args:
        value: the table's value.
    """
    if value is None or value is pd.NA or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def write_overview(sweep_dir: str | Path) -> tuple[Path, Path]:
    """Rebuild `sweep_overview.csv` and `sweep_overview.md` in `sweep_dir` from its job folders (atomically,
    under a lock shared by the sweep's jobs). Returns (csv path, md path).

    Args:
        sweep_dir: the sweep folder (Hydra's `hydra.sweep.dir`).
    """
    root = Path(sweep_dir)
    csv_path, md_path = root / f"{OVERVIEW}.csv", root / f"{OVERVIEW}.md"
    with file_lock(csv_path, "the sweep overview"):
        table, shared = overview(root)
        write_csv(csv_path, table)
        write_text(md_path, markdown(table, root, shared))
    return csv_path, md_path


def ended_jobs(sweep_dir: str | Path) -> tuple[dict[int, list[str]], list[tuple[int, str, bool]]]:
    """What the job folders of a sweep say: each numbered job's overrides, and (job, message, is bad input) of
    each failed job, sorted (for jobs that ran in other processes, e.g. with the submitit launcher).

    Args:
        sweep_dir: the sweep folder.
    """
    jobs: dict[int, list[str]] = {}
    failed: list[tuple[int, str, bool]] = []
    for job_dir in job_dirs(sweep_dir):
        row = job_row(job_dir)
        if not isinstance(row["job"], int):
            continue
        jobs[row["job"]] = row["_raw"]
        if row["status"] in ("bad input", "crashed"):
            failed.append((row["job"], row["message"], row["status"] == "bad input"))
    return jobs, sorted(failed)
