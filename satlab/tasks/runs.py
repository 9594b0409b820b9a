"""Finding earlier runs: the one place a task looks for results of another run to reuse.

Runs are found under `outputs/<task>/*/` and `multirun/<task>/*/*/` of the working directory. A run is reused
only when what it computed matches what this run would compute: the models' content keys (weights and
preprocessing) and the records context (the attack as it ran, the evaluation images' content, the seed, the
precision), all as recorded in its `summary.json`. How the config was written plays no part: `attack.eps=0.1254902`
and the default's 32/255 run the same attack and match; a config that reads the same but ran other weights does not.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)


def run_dirs(*tasks: str, root: Path | None = None) -> list[Path]:
    """The run folders of `tasks` under `root` (default: the working directory)."""
    root = Path.cwd() if root is None else root
    return sorted({p for task in tasks for pattern in (f"outputs/{task}/*/", f"multirun/{task}/*/*/")
                   for p in root.glob(pattern) if p.is_dir()})


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """A run's `summary.json`, or None when it is missing or not a JSON object."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def newest_file(name: str, tasks: Iterable[str]) -> Path | None:
    """The newest `name` (e.g. sat_matrix.csv) among the runs of `tasks`; None when there is none."""
    found = [run / name for run in run_dirs(*tasks) if (run / name).is_file()]
    return max(found, key=lambda p: (p.stat().st_mtime, str(p))) if found else None


def find_map(keys: Mapping[str, str], context: Mapping[str, Any], exclude: Path | None = None,
             tasks: Iterable[str] = ("sat", "ensemble")) -> Path | None:
    """The `sat_matrix.csv` of the newest run that holds every model of `keys` (name -> content key) with these
    weights and was computed in `context` (`satlab.sat.runtime.records_context`); None when no run matches."""
    wanted = json.loads(json.dumps(dict(context), default=str))  # as it reads back from a summary
    maps = [run / "sat_matrix.csv" for run in run_dirs(*tasks) if (run / "sat_matrix.csv").is_file()]
    for path in sorted(maps, key=lambda p: (p.stat().st_mtime, str(p)), reverse=True):  # the newest map first
        run = path.parent
        if exclude is not None and run.resolve() == exclude.resolve():
            continue
        summary = read_summary(run)
        if summary is None:
            continue
        stored = summary.get("model_keys") or {}
        if summary.get("records_context") == wanted and all(stored.get(n) == k for n, k in keys.items()):
            return run / "sat_matrix.csv"
    return None
