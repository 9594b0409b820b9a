"""task=analyze: component importance, spectral clustering, model map, error consistency and a report of a SAT matrix.

Reads and validates every input first (matrix, component metadata, records), so bad input stops the run before
any result file is written; then calls `satlab.analysis` and writes the results into the run dir (atomically),
to wandb, and to `summary.json`. See `conf/task/analyze.yaml` for the options.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from satlab.analysis import clustering as clu
from satlab.analysis import consistency, features, floors, importance, plots, report
from satlab.models.specs import resolve_spec
from satlab.sat import metric
from satlab.sat.records import load_records, read_matrix, write_matrix
from satlab.tasks.checks import check_section
from satlab.tasks.common import command_line, output_dir, write_summary
from satlab.tasks.runs import newest_file
from satlab.tasks.tracking import start_tracking
from satlab.utils import SatlabError, write_csv, write_text

log = logging.getLogger(__name__)


def find_matrix(option: Any, out_dir: Path) -> Path:
    """`analyze.matrix`, else the run dir's sat_matrix.csv, else the newest one of a `task=sat` run."""
    if option not in (None, ""):
        return Path(str(option)).expanduser()
    here = out_dir / "sat_matrix.csv"
    if here.is_file():
        log.info("analyze.matrix not given: using %s (the current run dir)", here)
        return here
    newest = newest_file("sat_matrix.csv", ["sat"])
    if newest is None:
        raise SatlabError("no SAT matrix to analyse: pass analyze.matrix=<sat_matrix.csv> (none in the run dir "
                          "and no outputs/sat/*/ run found)")
    log.info("analyze.matrix not given: using %s (the most recent task=sat run)", newest)
    return newest


def load_metadata(cfg: DictConfig, names: list[str], matrix_path: Path):
    """Components, families and per-model sources from the model set's catalog and/or models.csv by the matrix."""
    catalog_cfg = (cfg.model_set.get("catalog") or {}) if "model_set" in cfg else {}
    catalog = {}
    for name in (n for n in names if n in catalog_cfg):
        spec = resolve_spec(cfg.model_set, name)
        catalog[name] = {"family": spec.family, "components": dict(spec.components)}
    table = None
    csv = matrix_path.parent / "models.csv"
    if csv.is_file():
        try:
            table = pd.read_csv(csv, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise SatlabError(f"'{csv}' is not a readable CSV ({str(err).splitlines()[0]})") from None
    return features.resolve_metadata(names, catalog, table)


def load_kappa_inputs(option: Any, matrix_path: Path, names: list[str], sat: np.ndarray, eps_s: float):
    """(path, records, shared model names, rows) or None when no records file applies.

    The records must reproduce the matrix on the models they share (same SAT to 1e-6): an explicit file that does
    not is an error, the one next to the matrix is skipped with a warning (kappa, CIs and |X_AB| need records
    of this matrix).
    """
    explicit = option not in (None, "")
    path = Path(str(option)).expanduser() if explicit else matrix_path.parent / "records.npz"
    if not explicit and not path.is_file():
        log.info("no records.npz next to the matrix: error consistency (kappa) and CIs skipped")
        return None
    records = load_records(path)
    shared, rows = consistency.align(records.models, names)
    msg = ""
    if len(shared) < 2:
        msg = f"records '{path}' share {len(shared)} model(s) with the matrix; kappa and CIs need at least 2"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # empty X_AB: NaN on both sides
            sub = records.subset(rows)
            mine = metric.sat_matrix(sub.correct, sub.fooled, eps_s, sub.scope())
        idx = [names.index(n) for n in shared]
        diff = np.abs(np.nan_to_num(mine, nan=1e9) - np.nan_to_num(sat[np.ix_(idx, idx)], nan=1e9))
        if diff.max() > 1e-6:
            i, j = np.unravel_index(np.argmax(diff), diff.shape)
            msg = (f"records '{path}' do not reproduce the matrix: SAT({shared[i]}, {shared[j]}) is {mine[i, j]:.6g} "
                   f"from the records but {sat[idx[i], idx[j]]:.6g} in the matrix (eps_s {eps_s:g}); pass the "
                   "records.npz of the task=sat run that wrote the matrix")
    if msg:
        if explicit:
            raise SatlabError(msg)
        log.warning("%s: error consistency and CIs skipped", msg)
        return None
    return path, records, shared, rows


def find_eps_s(option: Any, matrix_path: Path) -> float:
    """`analyze.eps_s`, else the eps_s of the task=sat run that wrote the matrix (its summary.json), else 1e-8."""
    if option is not None:
        return float(option)
    try:
        config = json.loads((matrix_path.parent / "summary.json").read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return metric.DEFAULT_EPS_S
    for task in ("sat", "ensemble", "distill"):  # the tasks that write a sat_matrix.csv
        if isinstance(config.get(task), dict) and config[task].get("eps_s") is not None:
            return float(config[task]["eps_s"])
    return metric.DEFAULT_EPS_S


def _check_options(acfg: DictConfig, n_models: int, n_pairs: int) -> None:
    """Options checked against the matrix: `n_models` models, `n_pairs` pairs with a finite SAT."""
    k = acfg.get("n_clusters")
    if k is not None and not 2 <= k <= n_models - 1:  # an integer or null (checks.SCHEMA)
        raise SatlabError(f"analyze.n_clusters={k} must be null (the eigengap decides) or an integer between 2 and "
                          f"the number of models - 1 ({n_models - 1})")
    try:
        importance.held_out(acfg.test_size, n_pairs)
    except ValueError as err:
        raise SatlabError(f"analyze.{err}") from None


def _config_yaml(cfg: DictConfig) -> str:
    try:
        return OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - an unresolvable interpolation only affects the report's config block
        return OmegaConf.to_yaml(cfg)


def records_extras(kappa_inputs, names: list[str], eps_s: float, acfg: DictConfig):
    """|X_AB| [N,N] (NaN for models without records), bootstrap CIs (low, high) or None, and what was done."""
    n = len(names)
    n_joint = np.full((n, n), np.nan)
    if kappa_inputs is None:
        return None, None, {"n_boot": 0, "reason": "no records.npz of this matrix (pass analyze.records=...)"}
    _, records, shared, rows = kappa_inputs
    idx = np.array([names.index(m) for m in shared])
    sub = records.subset(rows)
    correct, fooled, scope = sub.correct, sub.fooled, sub.scope()
    n_joint[np.ix_(idx, idx)] = metric.joint_correct(correct, scope)
    n_boot = int(acfg.n_bootstrap)
    info = {"n_boot": n_boot, "seed": int(acfg.seed), "level": 0.95, "n_samples": int(correct.shape[1]),
            "n_models": len(shared)}
    if n_boot == 0:
        return n_joint, None, {**info, "reason": "analyze.n_bootstrap=0"}
    tick = time.perf_counter()
    part = metric.sat_bootstrap(correct, fooled, n_boot=n_boot, seed=int(acfg.seed), eps_s=eps_s, scope=scope)
    info["seconds"] = round(time.perf_counter() - tick, 3)
    ci = tuple(np.full((n, n), np.nan) for _ in part)
    for full, got in zip(ci, part):
        full[np.ix_(idx, idx)] = got
    return n_joint, ci, info


@dataclass
class MapInputs:
    """A checked SAT matrix with what it comes with: names, raw and floored values, metadata, records extras."""

    path: Path
    names: list[str]
    raw: np.ndarray
    sat: np.ndarray  # what the analyses use: floored cells kept from dominating
    floored: np.ndarray
    floor_info: dict
    components: dict
    families: dict
    sources: dict
    kappa_inputs: Any
    ci: Any
    ci_info: dict


def read_inputs(cfg: DictConfig, out_dir: Path) -> MapInputs:
    """Find, read and check the matrix and everything the analyses take from beside it (before any output)."""
    acfg = cfg.analyze
    path = find_matrix(acfg.get("matrix"), out_dir)
    names, raw = read_matrix(path, symmetric_tol=float(acfg.symmetric_tol), sat=True)
    if len(names) < 3:
        raise SatlabError(f"matrix '{path}' has {len(names)} model(s); the analysis needs at least 3 "
                          "(two models give one pair: nothing to compare)")
    raw = features.symmetrize(raw)
    eps_s = find_eps_s(acfg.get("eps_s"), path)
    floored = metric.floored(raw, eps_s)
    if problem := floors.no_information(raw, floored):
        raise SatlabError(f"matrix '{path}' has nothing to analyse: {problem}")
    _check_options(acfg, len(names), int(np.isfinite(features.pair_targets(raw)).sum()))
    components, families, sources = load_metadata(cfg, names, path)
    kappa_inputs = load_kappa_inputs(acfg.get("records"), path, names, raw, eps_s)
    n_joint, ci, ci_info = records_extras(kappa_inputs, names, eps_s, acfg)
    sat = floors.floor_values(raw, floored, n_joint)
    floor_info = {"eps_s": eps_s, "pairs": floors.floored_pairs(names, floored),
                  "rule": floors.describe(raw, floored, n_joint is not None)}
    if problem := floors.no_information(sat, np.zeros_like(floored)):
        raise SatlabError(f"matrix '{path}' has nothing to analyse once floored pairs are set to "
                          f"{floor_info['rule']}: {problem}")
    return MapInputs(path, names, raw, sat, floored, floor_info, components, families, sources, kappa_inputs, ci,
                     ci_info)


def run(cfg: DictConfig) -> dict:
    """Analyse a SAT matrix; returns the summary written to summary.json."""
    acfg = cfg.analyze
    check_section(cfg, "analyze")  # types and ranges (satlab.tasks.checks); the CLI checked them already
    start = time.perf_counter()
    out_dir = output_dir(cfg)
    inputs = read_inputs(cfg, out_dir)
    if (out_dir / "summary.json").is_file() and (out_dir / "sat_matrix.csv").is_file():
        out_dir = out_dir / "analyze"  # inside a task=sat run dir: keep its summary.json
    timings = {"load": time.perf_counter() - start}
    names, sat = inputs.names, inputs.sat

    tick = time.perf_counter()
    table, dropped = features.component_table(inputs.components, names)
    pairs = features.pair_features(table)
    pairs.insert(2, "sat", features.pair_targets(sat))
    pairs.insert(3, "floored", features.pair_targets(inputs.floored).astype(bool))
    seeds = [int(acfg.seed) + i for i in range(int(acfg.importance_seeds))]
    imp = importance.component_importance(
        pairs[list(table.columns)], pairs["sat"].to_numpy(), seeds=seeds, model=str(acfg.importance_model),
        test_size=float(acfg.test_size), n_repeats=int(acfg.n_repeats), n_estimators=int(acfg.n_estimators))
    timings["importance"] = time.perf_counter() - tick

    tick = time.perf_counter()
    max_clusters = min(int(acfg.max_clusters), len(names) - 1)
    if max_clusters < int(acfg.max_clusters):
        log.info("analyze.max_clusters=%s: the eigengap searches up to %d clusters (number of models - 1)",
                 acfg.max_clusters, max_clusters)
    result = clu.spectral_clusters(sat, acfg.get("n_clusters"), max_clusters, str(acfg.affinity))
    coords = clu.model_map(clu.sat_distance(sat), str(acfg.map), int(acfg.seed))
    clusters = pd.DataFrame({"model": names, "cluster": result.labels,
                             "family": [inputs.families[n] for n in names]})
    timings["clustering"] = time.perf_counter() - tick

    kappa = kappa_info = None
    if inputs.kappa_inputs is not None:
        rec_path, records, shared, rows = inputs.kappa_inputs
        idx = [names.index(n) for n in shared]
        kappa = (shared, consistency.kappa_matrix(records.correct[rows]), idx)
        kappa_info = {"records": str(rec_path), "n_models": len(shared), "n_samples": int(records.correct.shape[1]),
                      **consistency.kappa_sat_correlation(kappa[1], sat[np.ix_(idx, idx)])}

    tick = time.perf_counter()
    stats = report.matrix_summary(names, sat, top=int(acfg.top_pairs), floored=inputs.floored, ci=inputs.ci)
    files, figures = write_outputs(cfg, out_dir, inputs, imp, dropped, pairs, result, clusters, coords, stats,
                                   kappa, kappa_info)
    timings["write"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - start

    members = report.cluster_members(clusters)
    extra = {
        "matrix": str(inputs.path.resolve()), "n_models": len(names),
        "metadata_sources": pd.Series(inputs.sources).value_counts().to_dict(),
        "dropped_components": dropped, "matrix_stats": stats,
        "importance": {"model": imp.model, "seeds": seeds, "r2": imp.r2, "n_pairs": imp.n_pairs, "note": imp.note,
                       "ranking": imp.table["component"].tolist(),
                       "linear_ranking": imp.linear_table["component"].tolist()},
        "clusters": {"n_clusters": result.n_clusters, "eigengap_k": result.eigengap_k, "note": result.note,
                     "affinity": result.affinity,
                     "max_clusters_used": max_clusters, "sizes": [len(m) for _, m, _ in members]},
        "floors": {**inputs.floor_info, "n_floored_pairs": len(inputs.floor_info["pairs"])}, "ci": inputs.ci_info,
        "kappa": kappa_info, "files": {k: Path(v).name for k, v in files.items()},
    }
    summary_path = write_summary(out_dir, cfg, timings, **extra)
    track(cfg, out_dir, imp, result, clusters, stats, extra["kappa"], figures, [*files.values(), summary_path])
    _print_results(imp, members, result, extra["kappa"], out_dir, inputs.floor_info, stats, inputs.ci_info)
    return extra


def write_outputs(cfg: DictConfig, out_dir: Path, inputs: MapInputs, imp, dropped, pairs, result, clusters, coords,
                  stats, kappa, kappa_info) -> tuple[dict, dict]:
    """The CSVs, figures and report.md of an analysis; returns (files, figures) by name."""
    names = inputs.names
    files = {
        "component_importance": write_csv(out_dir / "component_importance.csv", imp.table, float_format="%.6g"),
        "pair_features": write_csv(out_dir / "pair_features.csv", pairs, float_format="%.10g"),
        "clusters": write_csv(out_dir / "clusters.csv", clusters),
    }
    figures = {
        "Component importance": plots.plot_importance(imp.table, out_dir / "importance.png",
                                                      f"Component importance ({imp.model})"),
        "SAT sorted by cluster": plots.plot_cluster_heatmap(names, inputs.raw, result.labels,
                                                            out_dir / "clusters_heatmap.png", inputs.floored),
        "Model map": plots.plot_model_map(names, coords, result.labels, out_dir / "model_map.png",
                                          method=str(cfg.analyze.map)),
        "Eigenvalues and eigengap": plots.plot_eigenvalues(result.eigenvalues, result.n_clusters, result.eigengap_k,
                                                           out_dir / "eigengap.png"),
    }
    if kappa is not None:
        shared, matrix, idx = kappa
        files["kappa_matrix"] = write_matrix(out_dir / "kappa_matrix.csv", shared, matrix)
        figures["Error consistency vs SAT"] = plots.plot_kappa_vs_sat(
            matrix, inputs.sat[np.ix_(idx, idx)], kappa_info["spearman_rho"], out_dir / "kappa_vs_sat.png")
    n_sources = pd.Series(inputs.sources).value_counts().to_dict()
    source_text = ", ".join(f"{src} for {n} models" for src, n in n_sources.items())
    text = report.build_report(
        matrix_path=str(inputs.path), stats=stats, importance=imp, dropped=dropped, clustering=result,
        clusters=clusters, kappa=kappa_info, figures={k: Path(v).name for k, v in figures.items()},
        command=command_line(), config_yaml=_config_yaml(cfg), metadata_source=source_text,
        floors=inputs.floor_info, ci_info=inputs.ci_info)
    files["report"] = write_text(out_dir / "report.md", text)
    files.update({Path(p).stem: Path(p) for p in figures.values()})
    return files, figures


def track(cfg: DictConfig, out_dir: Path, imp, result, clusters, stats, kappa_info, figures, files) -> None:
    """The analysis on wandb (offline by default): headline numbers, tables, figures, files."""
    tracker = start_tracking(cfg, "analyze", out_dir)
    tracker.log({"importance/r2_ensemble": imp.r2["ensemble_mean"], "importance/r2_linear": imp.r2["linear_mean"],
                 "clusters/n_clusters": result.n_clusters, "clusters/eigengap_k": result.eigengap_k,
                 "sat/median": stats["median"], **({"kappa/spearman_rho": kappa_info["spearman_rho"]}
                                                   if kappa_info else {})})
    tracker.log_table("component_importance", imp.table)
    tracker.log_table("clusters", clusters)
    for path in figures.values():
        tracker.log_image(Path(path).stem, path)
    tracker.summary({"n_clusters": result.n_clusters, "top_component": imp.table["component"].head(1).tolist()})
    tracker.log_artifact("sat-analysis", "analysis", files)
    tracker.finish()


def _print_results(imp, members, result, kappa_info, out_dir: Path, floor_info, stats, ci_info) -> None:
    pairs = floor_info["pairs"]
    if pairs:
        shown = ", ".join(f"{a}/{b}" for a, b in pairs[:10]) + (f" and {len(pairs) - 10} more" * (len(pairs) > 10))
        print(f"\n{len(pairs)} floored pair(s) (0% transfer, SAT = ln eps_s): {shown}")
        print(f"  the analyses use {floor_info['rule']} for them (sat_matrix.csv keeps ln eps_s)")
    print(f"\nMost similar pairs (SAT{', 95% CI' if ci_info.get('n_boot') else ''}):")
    for p in stats["most_similar"]:
        ci = f"  [{p['ci_low']:.3f}, {p['ci_high']:.3f}]" if np.isfinite(p["ci_low"]) else ""
        print(f"  {p['a']} / {p['b']}: {p['sat']:.3f}{ci}")
    print("\nComponent importance (permutation, drop in held-out R^2):")
    if imp.note:
        print(f"  not computed: {imp.note}")
    else:
        print(imp.table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"held-out R^2: {imp.model} {imp.r2['ensemble_mean']:.3f} +- {imp.r2['ensemble_std']:.3f}, "
              f"ridge {imp.r2['linear_mean']:.3f} +- {imp.r2['linear_std']:.3f}")
        if caution := report.importance_caution(imp.r2["ensemble_mean"], imp.n_pairs):
            print(f"caution: {caution}")
    print(f"\nClusters: {result.n_clusters} (eigengap suggests {result.eigengap_k})"
          + (f": {result.note}" if result.note else ""))
    for c, models, fams in members:
        print(f"  cluster {c} ({len(models)}; {fams}): {', '.join(models)}")
    if kappa_info:
        print(f"\nError consistency: Spearman rho(kappa, SAT) = {kappa_info['spearman_rho']:.4f} "
              f"over {kappa_info['n_pairs']} pairs")
    print(f"\nResults in {out_dir} (report.md)")
