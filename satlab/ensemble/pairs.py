"""Every pair of models as a two-member ensemble: accuracy, gains, NLL, calibration error, disagreement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from satlab.analysis.features import pair_index
from satlab.ensemble.combine import Scorer


@dataclass
class PairResults:
    """`table`: one row per pair (i < j, matrix order); `correct`: [P, S] bool, the ensemble's per-image hits."""

    table: pd.DataFrame
    correct: np.ndarray
    first: np.ndarray  # [P] index of model_a
    second: np.ndarray  # [P] index of model_b


def pair_results(scorer: Scorer, names: Sequence[str]) -> PairResults:
    """Score all N(N-1)/2 pairs. gain_best = ensemble - better member; gain_mean = ensemble - members' mean."""
    first, second = pair_index(scorer.n_models)
    acc = scorer.accuracy
    scores = scorer.score_teams(np.stack([first, second], axis=1))
    hits = np.stack([sc.correct.numpy() for sc in scores]) if scores else np.zeros((0, len(scorer.labels)), bool)
    disagree = (scorer.preds[first] != scorer.preds[second]).float().mean(dim=1).numpy()
    rows = []
    for p, (a, b, score) in enumerate(zip(first.tolist(), second.tolist(), scores)):
        rows.append({
            "model_a": names[a], "model_b": names[b], "acc_a": acc[a], "acc_b": acc[b],
            "accuracy": score.accuracy, "gain_best": score.accuracy - max(acc[a], acc[b]),
            "gain_mean": score.accuracy - 0.5 * (acc[a] + acc[b]), "nll": score.nll, "ece": score.ece,
            "disagreement": float(disagree[p]),
        })
    return PairResults(pd.DataFrame(rows), hits, first, second)
