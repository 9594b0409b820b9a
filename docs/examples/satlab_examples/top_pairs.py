"""A task of one's own: the k most similar pairs of a SAT matrix, with their transfer rate.

A task is a module with `run(cfg) -> dict`: it reads its options from the composed config, calls library
functions and writes into the run folder (`output_dir(cfg)`), ending with `summary.json`. satlab calls it when
the config's `task.module` names it (`conf/task/top_pairs.yaml` of docs/examples).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from satlab.sat.records import read_matrix
from satlab.tasks.common import output_dir, write_summary
from satlab.tasks.runs import newest_file
from satlab.utils import SatlabError, write_csv


def run(cfg: DictConfig) -> dict:
    """Write `top_pairs.csv`: the `top_pairs.k` pairs of highest SAT in `top_pairs.matrix`."""
    params = cfg.top_pairs
    k = params.k
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SatlabError(f"top_pairs.k={k} must be an integer >= 1")
    path = Path(str(params.matrix)) if params.matrix else newest_file("sat_matrix.csv", ["sat"])
    if path is None:
        raise SatlabError("top_pairs.matrix is required when there is no task=sat run under outputs/")
    path = path / "sat_matrix.csv" if path.is_dir() else path
    names, sat = read_matrix(path)
    rows, cols = np.triu_indices(len(names), k=1)
    pairs = pd.DataFrame({"model_a": [names[i] for i in rows], "model_b": [names[j] for j in cols],
                          "sat": sat[rows, cols]})
    pairs = pairs.dropna().sort_values("sat", ascending=False, kind="stable").head(k).reset_index(drop=True)
    pairs["transfer_percent"] = [math.exp(v) for v in pairs["sat"]]  # SAT = ln(transfer rate in %)
    out = output_dir(cfg)
    write_csv(out / "top_pairs.csv", pairs)
    summary = {"matrix": str(path), "top_pairs": pairs.to_dict("records")}
    write_summary(out, cfg, {}, **summary)
    for row in pairs.itertuples():
        print(f"{row.model_a} / {row.model_b}: SAT {row.sat:.2f} ({row.transfer_percent:.1f} % transfer)")
    print(f"results in {out}")
    return summary
