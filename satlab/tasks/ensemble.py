"""task=ensemble: which models to combine, and does SAT say so? (pairs, teams, gain vs SAT and kappa)

Checks every option and the SAT matrix before any model runs; then one prediction pass per model (cached),
pair and team scores from the cache, correlation statistics, and the outputs: ensemble_pairs.csv,
ensemble_teams.csv, ensemble_stats.csv, ensemble_models.csv, gain_vs_sat.png, teams.png, report.md,
summary.json, wandb. The math lives in `satlab.ensemble`; see `conf/task/ensemble.yaml` for the options.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from satlab.analysis.consistency import kappa_matrix
from satlab.analysis.features import symmetrize
from satlab.ensemble import plots
from satlab.ensemble.combine import Scorer, check_rule
from satlab.ensemble.pairs import pair_results
from satlab.ensemble.predict import predict_log_probs
from satlab.ensemble.report import ensemble_section, headline
from satlab.ensemble.stats import correlation_table
from satlab.ensemble.teams import check_teams, team_table
from satlab.models.loading import load_models
from satlab.train import engine_trainer_kwargs
from satlab.models.specs import model_specs
from satlab.sat import metric
from satlab.sat.engine import compute_records
from satlab.sat.records import read_matrix, write_matrix
from satlab.tasks.common import build, command_line, output_dir, write_summary
from satlab.tasks.tracking import start_tracking
from satlab.utils import SatlabError, write_csv, write_text

log = logging.getLogger(__name__)
SEARCH = ("outputs/sat/*/sat_matrix.csv", "multirun/sat/*/*/sat_matrix.csv", "outputs/ensemble/*/sat_matrix.csv")


def team_sizes(option: Any, n_models: int) -> list[int]:
    """`ensemble.team_sizes` as a list (null: 2 .. min(5, n_models)), checked against the number of models."""
    sizes = list(range(2, min(5, n_models) + 1)) if option is None else option
    sizes = list(sizes) if isinstance(sizes, (list, tuple)) or OmegaConf.is_list(sizes) else [sizes]
    check_teams(["random"], sizes, n_models)
    return sizes


def _check_counts(ecfg: DictConfig) -> None:
    for key, low in (("random_teams", 1), ("n_bootstrap", 1), ("n_permutations", 0), ("calibration_bins", 1)):
        value = ecfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SatlabError(f"ensemble.{key} must be an integer >= {low}, got {value!r}")
    if not 0 < float(ecfg.ci_level) < 1:
        raise SatlabError(f"ensemble.ci_level must be in (0, 1), got {ecfg.ci_level}")


def _same_dataset(a: dict, b: dict) -> bool:
    """Two dataset configs describe the same images (a key one of them lacks counts as unset: null/0)."""
    return all(a.get(k) == b.get(k) or {a.get(k), b.get(k)} <= {None, 0, 0.0} for k in set(a) | set(b))


def find_sat_matrix(option: Any, cfg: DictConfig, keys: dict[str, str | None], out_dir: Path) -> Path | None:
    """`ensemble.sat_matrix`, else the newest run of this dataset config, attack and seed whose summary lists
    every model with these weights (`keys`: name -> `PixelModel.fingerprint()`); names alone are not enough.
    A key None matches any weights (the check before the models are loaded)."""
    if option not in (None, ""):
        return Path(str(option)).expanduser()
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    attack = OmegaConf.to_container(cfg.attack, resolve=True)  # a map made with another attack or seed is not it
    found = []
    for path in (p for pattern in SEARCH for p in Path.cwd().glob(pattern)):
        summary = path.parent / "summary.json"
        if path.parent.resolve() == out_dir.resolve() or not summary.is_file():
            continue
        try:
            stored = json.loads(summary.read_text())
            config, run_keys = stored.get("config", {}), stored.get("model_keys", {})
            header = pd.read_csv(path, nrows=0, index_col=0).columns
        except (OSError, ValueError, AttributeError, pd.errors.ParserError, pd.errors.EmptyDataError):
            continue  # unreadable or not a summary: not a candidate
        if (all(name in run_keys and key in (None, run_keys[name]) for name, key in keys.items())
                and set(keys) <= set(header)
                and _same_dataset(config.get("dataset", {}), dataset) and config.get("seed") == cfg.seed
                and config.get("attack") == attack):
            found.append(path)
    if not found and not cfg.ensemble.compute_sat:
        raise SatlabError(f"no SAT matrix of model set {cfg.model_set.name} on this dataset: pass "
                          "ensemble.sat_matrix=<sat_matrix.csv> (e.g. the paper's SAT_release.csv), or set "
                          "ensemble.compute_sat=true to compute it here")
    if not found:
        log.info("ensemble.sat_matrix not given and no task=sat run of model set %s on this dataset config: "
                 "SAT is computed here with attack %s", cfg.model_set.name, cfg.attack.name)
        return None
    newest = max(found, key=lambda p: (p.stat().st_mtime, str(p)))
    log.info("ensemble.sat_matrix not given: using %s (the newest run of %s on this dataset)", newest,
             cfg.model_set.name)
    return newest


def load_sat(path: Path, names: list[str], tol: float) -> np.ndarray:
    """The symmetrised SAT matrix of `names` (in that order) from a matrix that must contain all of them."""
    sat_names, sat = read_matrix(path, symmetric_tol=tol)
    missing = [n for n in names if n not in sat_names]
    if missing:
        raise SatlabError(f"SAT matrix '{path}' lacks {len(missing)} model(s) of the model set: "
                          f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; pass a matrix of these "
                          "models (ensemble.sat_matrix=...) or pick models with model_set.models=[...]")
    idx = [sat_names.index(n) for n in names]
    return symmetrize(sat)[np.ix_(idx, idx)]


def run(cfg: DictConfig) -> dict:
    """Score every pair and team of `cfg.model_set` on `cfg.dataset`; returns the summary."""
    ecfg = cfg.ensemble
    timings: dict[str, float] = {}
    start = time.perf_counter()
    rule = check_rule(str(ecfg.combine))
    specs = model_specs(cfg.model_set)
    names = [s.name for s in specs]
    sizes = team_sizes(ecfg.get("team_sizes"), len(names))
    strategies = [str(s) for s in ecfg.strategies]
    check_teams(strategies, sizes, len(names))
    _check_counts(ecfg)
    if ecfg.get("team_sizes") is None:
        log.info("ensemble.team_sizes not given: teams of %s models", sizes)
    out = output_dir(cfg)
    if ecfg.get("sat_matrix") not in (None, ""):  # a given matrix is checked before any work
        load_sat(Path(str(ecfg.sat_matrix)).expanduser(), names, float(ecfg.symmetric_tol))
    elif not ecfg.compute_sat:  # and a missing one: no run of these names at all can match
        find_sat_matrix(None, cfg, dict.fromkeys(names), out)
    data = build(cfg, "dataset")
    if len(data.eval) == 0:
        raise SatlabError(f"dataset '{data.name}' has no evaluation images")
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    loaded = load_models(specs, data, int(cfg.seed), cfg.paths.cache_dir, cfg.model_set.get("train"), trainer_cfg)
    keys = {m.spec.name: m.key for m in loaded}
    matrix_path = find_sat_matrix(ecfg.get("sat_matrix"), cfg, keys, out)
    sat = load_sat(matrix_path, names, float(ecfg.symmetric_tol)) if matrix_path else None
    attack = build(cfg, "attack") if sat is None else None
    trainer_kwargs = engine_trainer_kwargs(trainer_cfg)  # what a predict pass takes (device, precision, bar)
    timings["load"] = time.perf_counter() - start

    tick = time.perf_counter()
    cache = Path(cfg.paths.cache_dir) if ecfg.resume else None
    preds = predict_log_probs([m.model for m in loaded], names, [m.key for m in loaded], data.eval,
                              int(ecfg.batch_size), int(ecfg.num_workers), cache, trainer_kwargs)
    timings["predict"] = time.perf_counter() - tick
    log.info("prediction pass: %d model(s) computed, %d read from the cache", len(preds.computed), len(preds.reused))
    if sat is None:
        tick = time.perf_counter()
        result = compute_records([m.model for m in loaded], names, [m.key for m in loaded], data.eval, attack,
                                 seed=int(cfg.seed), batch_size=int(ecfg.batch_size),
                                 num_workers=int(ecfg.num_workers), cache_dir=cache, trainer_kwargs=trainer_kwargs)
        sat = symmetrize(metric.sat_matrix(result.records.correct, result.records.fooled, float(ecfg.eps_s)))
        matrix_path = write_matrix(out / "sat_matrix.csv", names, sat)
        timings["sat"] = time.perf_counter() - tick

    tick = time.perf_counter()
    scorer = Scorer(preds.log_probs, preds.labels, rule, int(ecfg.calibration_bins))
    singles = scorer.score_teams([[m] for m in range(len(names))])
    models = pd.DataFrame({"model": names, "family": [s.family for s in specs], "accuracy": scorer.accuracy,
                           "nll": [s.nll for s in singles], "ece": [s.ece for s in singles]})
    pairs = pair_results(scorer, names)
    kappa = kappa_matrix(scorer.correct.numpy())
    table = pairs.table.assign(sat=sat[pairs.first, pairs.second], kappa=kappa[pairs.first, pairs.second])
    stats = correlation_table(pairs.correct, scorer.correct.numpy(), pairs.first, pairs.second, sat,
                              int(ecfg.n_bootstrap), int(ecfg.n_permutations), int(ecfg.seed), float(ecfg.ci_level))
    teams, _ = team_table(scorer, names, sat, sizes, strategies, int(ecfg.random_teams), int(ecfg.seed))
    timings["analysis"] = time.perf_counter() - tick

    info = {"data": f"{data.name} {OmegaConf.to_container(cfg.dataset, resolve=True)}", "samples": len(preds.labels),
            "combine": rule, "sat_source": str(matrix_path)}
    files = {name: write_csv(out / f"ensemble_{name}.csv", frame, float_format="%.6g")
             for name, frame in (("pairs", table), ("teams", teams), ("stats", stats), ("models", models))}
    title = f"{cfg.model_set.name} on {data.name}, {rule}"
    figures = {"Gain vs SAT and kappa": plots.plot_gain_vs_sat(table, stats, out / "gain_vs_sat.png", title),
               "Teams by strategy": plots.plot_teams(teams, out / "teams.png", title)}
    text = ensemble_section(info, models, table, stats, teams, {k: Path(v).name for k, v in figures.items()})
    text = f"# satlab ensemble report\n\nCommand: `{command_line()}`\n\n{text}"
    files["report"] = write_text(out / "report.md", text)
    lines = headline(stats, teams)
    extra = {
        "models": names, "model_keys": keys, "samples": len(preds.labels), "combine": rule, "sat_matrix": str(Path(matrix_path).resolve()),
        "sat_computed_here": "sat" in timings, "team_sizes": sizes, "strategies": strategies,
        "accuracy": dict(zip(names, np.round(scorer.accuracy, 4).tolist())),
        "forward_passes": {"computed": preds.computed, "reused": preds.reused, "data_key": preds.data_key},
        "correlations": stats.to_dict(orient="records"), "headline": lines,
        "files": {k: Path(v).name for k, v in {**files, **figures}.items()},
    }
    timings.update(preds.timings)
    summary_path = write_summary(out, cfg, timings, **extra)

    tracker = start_tracking(cfg, "ensemble", out)
    best = stats[(stats.target == "gain_best") & (stats.method == "spearman")].set_index("predictor")
    tracker.log({f"{p}/spearman_rho": float(r) for p, r in best["r"].items()})
    for key, frame in (("ensemble_pairs", table), ("ensemble_teams", teams), ("ensemble_stats", stats)):
        tracker.log_table(key, frame)
    for path in figures.values():
        tracker.log_image(Path(path).stem, path)
    tracker.log_artifact("ensemble", "ensemble", [*files.values(), summary_path])
    tracker.summary({"headline": lines})
    tracker.finish()

    print(models.to_string(index=False, float_format="%.4f"))
    print("\n" + "\n".join(lines))
    print(f"\nresults in {out} (report.md)")
    return extra
