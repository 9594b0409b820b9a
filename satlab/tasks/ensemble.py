"""task=ensemble: which models to combine, and does SAT say so? (pairs, teams, gain vs SAT and kappa)

Checks every option and the SAT matrix before any model runs; then one prediction pass per model (cached),
pair and team scores from the cache, correlation statistics, and the outputs: ensemble_pairs.csv,
ensemble_teams.csv, ensemble_stats.csv, ensemble_models.csv, gain_vs_sat.png, teams.png, report.md,
summary.json, wandb. The math lives in `satlab.ensemble`; see `conf/task/ensemble.yaml` for the options.
"""

from __future__ import annotations

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
from satlab.ensemble.combine import Scorer
from satlab.ensemble.pairs import pair_results
from satlab.ensemble.predict import predict_log_probs
from satlab.ensemble.report import ensemble_section, headline
from satlab.ensemble.stats import correlation_table
from satlab.ensemble.teams import check_teams, team_table
from satlab.models.specs import model_specs
from satlab.sat import metric
from satlab.sat.engine import compute_records
from satlab.sat.records import read_matrix, write_matrix
from satlab.sat.runtime import records_context
from satlab.tasks.common import (build, command_line, decode_eval, eval_data, open_models, output_dir, trainer_config,
                                 write_summary)
from satlab.tasks.runs import find_map, read_summary, run_dirs
from satlab.tasks.tracking import start_tracking
from satlab.utils import SatlabError, write_csv, write_text

log = logging.getLogger(__name__)


def team_sizes(option: Any, n_models: int) -> list[int]:
    """`ensemble.team_sizes` as a list (null: 2 .. min(5, n_models)), checked against the number of models."""
    sizes = list(range(2, min(5, n_models) + 1)) if option is None else option
    sizes = list(sizes) if isinstance(sizes, (list, tuple)) or OmegaConf.is_list(sizes) else [sizes]
    check_teams(["random"], sizes, n_models)
    return sizes


def matrix_source(cfg: DictConfig, names: list[str], out: Path, models: Any = None, context: Any = None) -> Path | None:
    """`ensemble.sat_matrix`, else the newest map of these models' weights computed in `context` (what this run
    would compute: `satlab.tasks.runs.find_map`); None: compute it here. Without `models` (before any model is
    built) it only checks that some earlier run holds these model names at all when `ensemble.compute_sat=false`,
    so a missing matrix is refused before any work."""
    if given := cfg.ensemble.get("sat_matrix"):
        return Path(str(given)).expanduser()
    missing = SatlabError(f"no SAT matrix of model set {cfg.model_set.name} on this dataset: pass "
                          "ensemble.sat_matrix=<sat_matrix.csv> (e.g. the paper's SAT_release.csv), or set "
                          "ensemble.compute_sat=true to compute it here")
    if models is None:  # summaries are read only when a missing matrix would be an error
        if not cfg.ensemble.compute_sat and not any(
                set(names) <= set((read_summary(r) or {}).get("model_keys") or {}) for r in run_dirs("sat", "ensemble")):
            raise missing
        return None
    found = find_map(dict(zip(names, models.keys())), context, exclude=out)
    if found is None and not cfg.ensemble.compute_sat:
        raise missing
    log.info("ensemble.sat_matrix not given: %s", f"using {found} (a map of these weights, same attack, images, "
             "seed and precision)" if found else f"no matching map; computing it with attack {cfg.attack.name}")
    return found


def load_sat(path: Path, names: list[str], tol: float) -> np.ndarray:
    """The symmetrised SAT matrix of `names` (in that order) from a matrix that must contain all of them."""
    sat_names, sat = read_matrix(path, symmetric_tol=tol, sat=True)
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
    rule = str(ecfg.combine)  # checked by the config schema
    names = [s.name for s in model_specs(cfg.model_set)]
    sizes = team_sizes(ecfg.get("team_sizes"), len(names))
    strategies = [str(s) for s in ecfg.strategies]
    check_teams(strategies, sizes, len(names))
    out = output_dir(cfg)
    if given := matrix_source(cfg, names, out):  # a given matrix is checked before any work
        load_sat(given, names, float(ecfg.symmetric_tol))
    start = time.perf_counter()
    attack = build(cfg, "attack")
    data = eval_data(cfg)
    decode_eval(data, Path(cfg.paths.cache_dir) if ecfg.resume else None)  # before any model work
    models = open_models(cfg, data)
    trainer_cfg = trainer_config(cfg)
    context = records_context(attack, data.eval, int(cfg.seed), trainer_cfg)
    matrix_path = matrix_source(cfg, names, out, models, context)
    timings = {"load": time.perf_counter() - start}

    tick = time.perf_counter()
    preds = predict_log_probs(models, data.eval, int(ecfg.batch_size), int(ecfg.num_workers),
                              Path(cfg.paths.cache_dir) if ecfg.resume else None, trainer_cfg)
    timings["predict"] = time.perf_counter() - tick
    log.info("prediction pass: %d model(s) computed, %d read from the cache", len(preds.computed), len(preds.reused))
    if matrix_path is None:
        tick = time.perf_counter()
        result = compute_records(models, data.eval, attack, seed=int(cfg.seed),
                                 batch_size=int(ecfg.batch_size), num_workers=int(ecfg.num_workers),
                                 cache_dir=Path(cfg.paths.cache_dir) if ecfg.resume else None, trainer_cfg=trainer_cfg)
        matrix_path = write_matrix(out / "sat_matrix.csv", names,
                                   metric.sat_matrix(result.records.correct, result.records.fooled, float(ecfg.eps_s)))
        timings["sat"] = time.perf_counter() - tick
    sat = load_sat(matrix_path, names, float(ecfg.symmetric_tol))

    tick = time.perf_counter()
    scorer = Scorer(preds.log_probs, preds.labels, rule, int(ecfg.calibration_bins))
    singles = scorer.score_teams([[m] for m in range(len(names))])
    table = pd.DataFrame({"model": names, "family": [s.family for s in models.specs], "accuracy": scorer.accuracy,
                          "nll": [s.nll for s in singles], "ece": [s.ece for s in singles]})
    pairs = pair_results(scorer, names)
    kappa = kappa_matrix(scorer.correct.numpy())
    pair_table = pairs.table.assign(sat=sat[pairs.first, pairs.second], kappa=kappa[pairs.first, pairs.second])
    stats = correlation_table(pairs.correct, scorer.correct.numpy(), pairs.first, pairs.second, sat,
                              int(ecfg.n_bootstrap), int(ecfg.n_permutations), int(ecfg.seed), float(ecfg.ci_level))
    teams, _ = team_table(scorer, names, sat, sizes, strategies, int(ecfg.random_teams), int(ecfg.seed))
    timings["analysis"] = time.perf_counter() - tick
    timings.update(preds.timings)

    info = {"data": f"{data.name} {OmegaConf.to_container(cfg.dataset, resolve=True)}", "samples": len(preds.labels),
            "combine": rule, "sat_source": str(matrix_path)}
    extra = {"models": names, "model_keys": dict(zip(names, models.keys())), "samples": len(preds.labels),
             "combine": rule, "sat_matrix": str(Path(matrix_path).resolve()), "sat_computed_here": "sat" in timings,
             "records_context": context, "team_sizes": sizes, "strategies": strategies, "dataset_notes": data.notes,
             "accuracy": dict(zip(names, np.round(scorer.accuracy, 4).tolist())),
             "forward_passes": {"computed": preds.computed, "reused": preds.reused, "data_key": preds.data_key}}
    return write_outputs(cfg, out, timings, info, extra, table, pair_table, stats, teams)


def write_outputs(cfg: DictConfig, out: Path, timings: dict, info: dict, extra: dict, models: pd.DataFrame,
                  table: pd.DataFrame, stats: pd.DataFrame, teams: pd.DataFrame) -> dict:
    """The CSVs, figures, report, summary.json and wandb run of an ensemble study; prints the headline."""
    files = {name: write_csv(out / f"ensemble_{name}.csv", frame, float_format="%.6g")
             for name, frame in (("pairs", table), ("teams", teams), ("stats", stats), ("models", models))}
    title = f"{cfg.model_set.name} on {cfg.dataset.name}, {info['combine']}"
    figures = {"Gain vs SAT and kappa": plots.plot_gain_vs_sat(table, stats, out / "gain_vs_sat.png", title),
               "Teams by strategy": plots.plot_teams(teams, out / "teams.png", title)}
    text = ensemble_section(info, models, table, stats, teams, {k: Path(v).name for k, v in figures.items()})
    files["report"] = write_text(out / "report.md", f"# satlab ensemble report\n\nCommand: `{command_line()}`\n\n{text}")
    lines = headline(stats, teams)
    extra |= {"correlations": stats.to_dict(orient="records"), "headline": lines,
              "files": {k: Path(v).name for k, v in {**files, **figures}.items()}}
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
