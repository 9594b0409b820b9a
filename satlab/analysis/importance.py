"""Which architecture components explain SAT: a regression of pair SAT on pair features, with scikit-learn.

For each seed s in `seeds`: split the pairs into train / held-out (`test_size`, random_state=s), fit a tree
ensemble (gradient boosting by default, or a random forest; random_state=s) and a linear model (standardised
features + RidgeCV), and compute the permutation importance of every component on the held-out pairs
(`n_repeats` shuffles, random_state=s) as the drop in held-out R^2. Importance = mean over seeds and repeats,
std = std over seeds and repeats; rank 1 = most important. One feature per component, so a component's
importance is that feature's. Same inputs and seeds -> same numbers.

Caveat: pairs that share a model are not independent, so a random pair split is optimistic about R^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.inspection import permutation_importance
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

MODELS = ("gradient_boosting", "random_forest")
TABLE_COLUMNS = ("component", "importance_mean", "importance_std", "rank")
MIN_PAIRS = 6
MIN_SIDE = 2  # pairs on each side of the split (R^2 on one held-out pair is undefined)


def make_ensemble(kind: str, seed: int, n_estimators: int = 300):
    """The tree ensemble regressor `kind` (one of MODELS) with a fixed random_state."""
    if kind == "gradient_boosting":
        return GradientBoostingRegressor(
            n_estimators=n_estimators, max_depth=3, learning_rate=0.05, subsample=0.8, random_state=seed
        )
    if kind == "random_forest":
        return RandomForestRegressor(n_estimators=n_estimators, min_samples_leaf=2, random_state=seed, n_jobs=1)
    raise ValueError(f"unknown importance model '{kind}'; choose one of {MODELS}")


def held_out(test_size: float, n_pairs: int) -> int:
    """Pairs held out: round(test_size * n_pairs). ValueError when test_size is not in (0, 1) or, with at least
    MIN_PAIRS pairs (fewer: importance is skipped), either side keeps fewer than MIN_SIDE pairs."""
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or not 0 < test_size < 1:
        raise ValueError(f"test_size={test_size} must be a share of the pairs strictly between 0 and 1")
    n_test = int(round(test_size * n_pairs))
    if n_pairs >= MIN_PAIRS and min(n_test, n_pairs - n_test) < MIN_SIDE:
        raise ValueError(f"test_size={test_size} holds out {n_test} of {n_pairs} pairs; the held-out and the "
                         f"training side each need at least {MIN_SIDE} (choose a test_size between "
                         f"{math.ceil(1000 * (MIN_SIDE - 0.4) / n_pairs) / 1000} and "
                         f"{math.floor(1000 * (1 - (MIN_SIDE - 0.4) / n_pairs)) / 1000})")
    return n_test


def make_linear():
    """The linear comparison model: standardised features + ridge with the penalty chosen by CV."""
    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))


@dataclass
class Importance:
    """Component importance of the ensemble (`table`) and of the linear model (`linear_table`), held-out R^2."""

    table: pd.DataFrame
    linear_table: pd.DataFrame
    r2: dict[str, float] = field(default_factory=dict)
    n_pairs: int = 0
    n_test: int = 0
    model: str = "gradient_boosting"
    note: str = ""


def _rank_table(components: Sequence[str], samples: np.ndarray) -> pd.DataFrame:
    """samples [n_samples, n_components] -> table sorted by mean importance, rank 1 = largest."""
    mean = samples.mean(axis=0)
    std = samples.std(axis=0)
    table = pd.DataFrame({"component": list(components), "importance_mean": mean, "importance_std": std})
    table = table.sort_values(["importance_mean", "component"], ascending=[False, True], kind="stable")
    table["rank"] = np.arange(1, len(table) + 1)
    return table.reset_index(drop=True)


def empty_importance(note: str, model: str = "gradient_boosting") -> Importance:
    """An Importance with no rows (too few pairs or no informative component) and the reason."""
    empty = pd.DataFrame({c: pd.Series(dtype=float if "importance" in c else object) for c in TABLE_COLUMNS})
    nan = float("nan")
    r2 = {"ensemble_mean": nan, "ensemble_std": nan, "linear_mean": nan, "linear_std": nan}
    return Importance(empty, empty.copy(), r2, model=model, note=note)


def component_importance(
    features: pd.DataFrame,
    target: np.ndarray,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    model: str = "gradient_boosting",
    test_size: float = 0.25,
    n_repeats: int = 5,
    n_estimators: int = 300,
) -> Importance:
    """Permutation importance of each feature column (one per component) for predicting `target` (pair SAT).

    Pairs whose target is NaN are left out. With fewer than MIN_PAIRS pairs or no feature column, returns an
    empty result whose `note` says why.
    """
    if model not in MODELS:
        raise ValueError(f"unknown importance model '{model}'; choose one of {MODELS}")
    if min(n_repeats, n_estimators, len(seeds)) < 1:
        raise ValueError(f"n_repeats={n_repeats}, n_estimators={n_estimators} and the {len(seeds)} seeds must "
                         "each be at least 1")
    target = np.asarray(target, dtype=float)
    keep = np.isfinite(target)
    X = features.loc[keep].to_numpy(dtype=float)
    y = target[keep]
    comps = list(features.columns)
    if not comps:
        return empty_importance("no component differs between the models, so there is nothing to rank", model)
    if len(y) < MIN_PAIRS:
        return empty_importance(f"{len(y)} model pairs with a finite SAT; at least {MIN_PAIRS} are needed", model)
    n_test = held_out(test_size, len(y))
    seeds = [int(s) for s in seeds]
    ens_imp, lin_imp, ens_r2, lin_r2 = [], [], [], []
    for seed in seeds:
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=n_test, random_state=seed)
        fits = ((make_ensemble(model, seed, n_estimators), ens_imp, ens_r2), (make_linear(), lin_imp, lin_r2))
        for est, imp, r2 in fits:
            est.fit(X_tr, y_tr)
            r2.append(est.score(X_te, y_te))
            result = permutation_importance(est, X_te, y_te, n_repeats=n_repeats, random_state=seed, n_jobs=1)
            imp.append(result.importances.T)  # [n_repeats, n_features]
    r2 = {
        "ensemble_mean": float(np.mean(ens_r2)),
        "ensemble_std": float(np.std(ens_r2)),
        "linear_mean": float(np.mean(lin_r2)),
        "linear_std": float(np.std(lin_r2)),
    }
    return Importance(
        table=_rank_table(comps, np.concatenate(ens_imp)),
        linear_table=_rank_table(comps, np.concatenate(lin_imp)),
        r2=r2,
        n_pairs=int(len(y)),
        n_test=n_test,
        model=model,
    )
