"""Teams of k models chosen by different strategies, compared at equal k. Pure numpy (scoring via `Scorer`).

Strategies (`STRATEGIES`), all deterministic except `random`:
- `sat_diverse`: start from the most accurate model; repeatedly add the model with the lowest mean SAT to the
  current members (SAT's pick: the most diverse team).
- `sat_clusters`: spectral clustering of SAT into k clusters (`satlab.analysis.clustering`); the most accurate
  model of each cluster.
- `sat_similar`: as sat_diverse but adding the highest mean SAT (the control: a team of look-alikes).
- `top_accuracy`: the k most accurate models.
- `random`: `draws` uniform random k-subsets, or every k-subset when there are no more than `draws`; reported as
  the 5th/50th/95th percentiles of accuracy and gain.
Ties go to the model listed first. Model accuracy is measured on the same images the teams are scored on.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from satlab.analysis.clustering import spectral_clusters
from satlab.ensemble.combine import Score, Scorer
from satlab.utils import SatlabError

STRATEGIES = ("sat_diverse", "sat_clusters", "sat_similar", "top_accuracy", "random")
PERCENTILES = (5, 50, 95)


def check_teams(strategies: Sequence[str], sizes: Sequence[int], n_models: int) -> None:
    """Unknown strategies, sizes outside [2, n_models] and a strategy or size listed twice raise SatlabError."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise SatlabError(f"ensemble.strategies: unknown {unknown or 'empty list'}; "
                          f"choose from {', '.join(STRATEGIES)}")
    for key, values in (("strategies", list(strategies)), ("team_sizes", list(sizes))):
        twice = sorted({str(v) for i, v in enumerate(values) if v in values[:i]})
        if twice:
            raise SatlabError(f"ensemble.{key} lists {', '.join(twice)} more than once; give each once")
    for k in sizes:
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= n_models:
            raise SatlabError(f"ensemble.team_sizes: {k!r} is not a team size; use integers from 2 to the number "
                              f"of models ({n_models})")


def greedy(sat: np.ndarray, accuracy: np.ndarray, k: int, most_similar: bool = False,
           start: Sequence[int] | None = None) -> list[int]:
    """From `start` (default: the most accurate model), add the model with the lowest (highest) mean SAT."""
    team = [int(m) for m in start] if start else [int(np.argmax(accuracy))]
    sign = -1.0 if most_similar else 1.0
    while len(team) < k:
        rest = [m for m in range(len(accuracy)) if m not in team]
        with np.errstate(invalid="ignore"):
            mean_sat = np.array([np.nanmean(sat[m, team]) if np.isfinite(sat[m, team]).any() else np.nan
                                 for m in rest])
        cost = np.where(np.isfinite(mean_sat), sign * mean_sat, np.inf)
        team.append(rest[int(np.argmin(cost))])
    return team


def one_per_cluster(sat: np.ndarray, accuracy: np.ndarray, k: int) -> list[int]:
    """The most accurate model of each of k spectral SAT clusters, in order of accuracy (an empty cluster's
    place goes to the most SAT-diverse remaining model). With k = N every model is a cluster of its own."""
    n = len(accuracy)
    labels = np.arange(n) if k >= n else spectral_clusters(sat, n_clusters=k).labels
    team = [max(np.flatnonzero(labels == c), key=lambda m: (accuracy[m], -m)) for c in np.unique(labels)]
    return greedy(sat, accuracy, k, start=sorted((int(m) for m in team), key=lambda m: (-accuracy[m], m)))


def top_accuracy(accuracy: np.ndarray, k: int) -> list[int]:
    return [int(m) for m in np.argsort(-accuracy, kind="stable")[:k]]


PICKERS: dict[str, Callable[[np.ndarray, np.ndarray, int], list[int]]] = {
    "sat_diverse": lambda sat, acc, k: greedy(sat, acc, k),
    "sat_clusters": one_per_cluster,
    "sat_similar": lambda sat, acc, k: greedy(sat, acc, k, most_similar=True),
    "top_accuracy": lambda sat, acc, k: top_accuracy(acc, k),
}


def random_teams(n_models: int, k: int, draws: int, seed: int) -> list[tuple[int, ...]]:
    """`draws` uniform random k-subsets (sorted members), or all of them when there are at most `draws`."""
    if math.comb(n_models, k) <= draws:
        return list(itertools.combinations(range(n_models), k))
    rng = np.random.default_rng([seed, k])
    return [tuple(sorted(rng.choice(n_models, size=k, replace=False).tolist())) for _ in range(draws)]


def _row(scorer: Scorer, members: Sequence[int], sat: np.ndarray, score: Score | None = None) -> dict:
    score = score or scorer.score(members)
    acc = scorer.accuracy[list(members)]
    pair_sat = [sat[a, b] for a, b in itertools.combinations(members, 2)]
    return {"accuracy": score.accuracy, "gain_best": score.accuracy - acc.max(),
            "gain_mean": score.accuracy - acc.mean(), "nll": score.nll, "ece": score.ece,
            "mean_sat": float(np.nanmean(pair_sat)) if np.isfinite(pair_sat).any() else float("nan")}


def _percentile(values: np.ndarray, q: float) -> float:
    finite = values[np.isfinite(values)]
    return float(np.percentile(finite, q)) if finite.size else float("nan")


def team_table(scorer: Scorer, names: Sequence[str], sat: np.ndarray, sizes: Sequence[int],
               strategies: Sequence[str], draws: int = 200, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Teams per strategy and size (rows), and the random teams' accuracies per size ({k: array})."""
    check_teams(strategies, sizes, scorer.n_models)
    rows, random_acc = [], {}
    for k in sizes:
        rand = None
        if "random" in strategies:
            teams = random_teams(scorer.n_models, k, draws, seed)
            rand = pd.DataFrame([_row(scorer, t, sat, sc) for t, sc in zip(teams, scorer.score_teams(teams))])
            random_acc[k] = rand["accuracy"].to_numpy()
        for strategy in (s for s in strategies if s != "random"):
            members = PICKERS[strategy](sat, scorer.accuracy, k)
            row = {"strategy": strategy, "k": k, "members": ";".join(names[m] for m in members),
                   **_row(scorer, members, sat)}
            if rand is not None:
                below = (rand["accuracy"] < row["accuracy"]).sum() + 0.5 * (rand["accuracy"] == row["accuracy"]).sum()
                row["random_percentile"] = 100.0 * below / len(rand)
            rows.append(row)
        if rand is not None:
            for q in PERCENTILES:
                rows.append({"strategy": f"random_p{q:02d}", "k": k, "members": f"{len(rand)} teams",
                             **{c: _percentile(rand[c].to_numpy(), q) for c in rand.columns}})
    return pd.DataFrame(rows), random_acc
