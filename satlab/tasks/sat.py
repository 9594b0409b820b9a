"""task=sat (the main job): load or train the model set, run the SAT engine, write every output file.

Outputs in the run dir: records.npz, sat_matrix.csv (the paper's format), sat_ci.csv (per pair: SAT, bootstrap
95% CI over images, |X_AB|, both transfer rates, floored), transfer_rates.csv, models.csv, heatmap.png,
summary.json; and a wandb run (offline by default) with config, accuracies, tables and artifacts.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from satlab.analysis.plots import plot_sat_heatmap
from satlab.analysis.structure import structure
from satlab.models.loading import LoadedModel, load_models
from satlab.models.specs import COMPONENTS, model_specs
from satlab.sat import metric
from satlab.sat.engine import assemble_records, compute_records
from satlab.sat.records import save_records, write_matrix
from satlab.sat.shards import select_sources
from satlab.tasks.common import build, output_dir, write_summary
from satlab.tasks.tracking import start_tracking
from satlab.train import engine_trainer_kwargs
from satlab.train.finetune import load_trained
from satlab.utils import SatlabError, write_csv, check_writable_dir

log = logging.getLogger(__name__)


def models_table(loaded: list[LoadedModel], correct: np.ndarray, whitebox: np.ndarray) -> pd.DataFrame:
    """models.csv: model, family, clean accuracy, white-box success, then the known components."""
    rows = []
    for i, item in enumerate(loaded):
        row = {
            "model": item.spec.name,
            "family": item.spec.family,
            "clean_accuracy": float(correct[i].mean()) if correct.shape[1] else float("nan"),
            "whitebox_success": float(whitebox[i]),
            "timm_name": item.spec.timm_name,
        }
        row.update({c: item.spec.components.get(c, "") for c in COMPONENTS})
        rows.append(row)
    return pd.DataFrame(rows)


def run(cfg: DictConfig) -> dict:
    """Compute the SAT matrix of `cfg.model_set` on `cfg.dataset` under `cfg.attack`."""
    params = cfg.sat
    check_writable_dir(cfg.paths.cache_dir, "paths.cache_dir")
    if not float(params.eps_s) > 0:
        raise SatlabError(f"sat.eps_s must be > 0 (it floors the argument of the log), got {params.eps_s}")
    n_boot = params.get("n_bootstrap", 1000)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        raise SatlabError(f"sat.n_bootstrap={n_boot} must be an integer >= 0 (resamples for sat_ci.csv; 0: no CIs)")
    out = output_dir(cfg)
    timings: dict[str, float] = {}
    specs = model_specs(cfg.model_set)
    sources, assemble = select_sources([s.name for s in specs], params.get("shard")), bool(params.get("assemble"))
    if assemble and sources is not None:
        raise SatlabError("sat.assemble=true builds the whole map from the cache; drop sat.shard")
    if (assemble or sources is not None) and not params.resume:
        raise SatlabError("sat.shard and sat.assemble meet in the records cache: set sat.resume=true")
    attack = build(cfg, "attack")
    start = time.perf_counter()
    data = build(cfg, "dataset")
    timings["data"] = time.perf_counter() - start
    if len(data.eval) == 0:
        raise SatlabError(f"dataset '{data.name}' has no evaluation images")
    attack.check_resolution(data.resolution)
    log.info("attack %s", attack.summary())  # the budget used; attack.notes say what was adjusted
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    start = time.perf_counter()
    if cfg.model_set.get("trained_from"):  # the models a task=train run fine-tuned on this dataset
        loaded = load_trained(specs, cfg.model_set.trained_from, data, int(cfg.seed))
    else:
        loaded = load_models(specs, data, int(cfg.seed), cfg.paths.cache_dir, cfg.model_set.get("train"), trainer_cfg)
    timings["models"] = time.perf_counter() - start

    names = [m.spec.name for m in loaded]
    trainer_kwargs = engine_trainer_kwargs(trainer_cfg)
    start = time.perf_counter()
    if assemble:  # before tracking: missing rows stop the run with nothing written
        result = assemble_records(names, [m.key for m in loaded], data.eval, attack, cfg.paths.cache_dir,
                                  seed=int(cfg.seed), trainer_kwargs=trainer_kwargs)
    tracker = start_tracking(cfg, "sat", out)
    if not assemble:
        result = compute_records(
            [m.model for m in loaded], names, [m.key for m in loaded], data.eval, attack,
            seed=int(cfg.seed), batch_size=int(params.batch_size), num_workers=int(params.num_workers),
            cache_dir=Path(cfg.paths.cache_dir) if params.resume else None, trainer_kwargs=trainer_kwargs,
            sources=sources, store_adversarial=bool(params.get("store_adversarial")),
        )
    timings["engine"] = time.perf_counter() - start
    timings.update(result.timings)
    if result.records is None:  # a shard: its rows are in the cache
        summary = {"shard": sources, "reused_sources": result.reused, "computed_sources": result.computed,
                   "completed_sources": result.completed}
        write_summary(out, cfg, timings, **summary)
        tracker.summary({"timings_s": timings, "shard": sources})
        tracker.finish()
        print(f"shard done: rows of {', '.join(sources or [])} are in {Path(cfg.paths.cache_dir) / 'records'}; "
              "when every shard is done, run the same command with sat.assemble=true (and no sat.shard)")
        return summary
    records = result.records
    names = records.models
    sat = metric.sat_matrix(records.correct, records.fooled, float(params.eps_s))
    rates = metric.transfer_rates(records.correct, records.fooled)
    table = models_table(loaded, records.correct, np.diagonal(rates))

    tick = time.perf_counter()
    pairs = pd.DataFrame(metric.pair_table(names, records.correct, records.fooled, float(params.eps_s),
                                           n_boot=n_boot, seed=int(cfg.seed)))
    timings["bootstrap_ci"] = time.perf_counter() - tick
    floored = pairs.loc[pairs["floored"], ["model_a", "model_b"]].to_numpy().tolist()

    save_records(out / "records.npz", records)
    write_matrix(out / "sat_matrix.csv", names, sat)
    write_matrix(out / "transfer_rates.csv", names, rates)
    write_csv(out / "models.csv", table)
    write_csv(out / "sat_ci.csv", pairs, float_format="%.10g")
    plot_sat_heatmap(names, sat, out / "heatmap.png", title=f"SAT: {cfg.model_set.name} on {data.name}, {attack.name}",
                     floored=metric.floored(sat, float(params.eps_s)))
    n_pairs = metric.joint_correct(records.correct)
    shape = structure(sat, names, [m.spec.family for m in loaded],
                      [f"{m.spec.timm_name} {sorted(m.spec.model_args.items())}" for m in loaded])
    summary = {
        "models": names,
        "model_keys": {m.spec.name: m.key for m in loaded},  # weights + preprocessing: what later tasks match on
        "samples": int(len(records.sample_ids)),
        "attack": attack.describe(),
        "attack_notes": list(attack.notes),
        "clean_accuracy": dict(zip(names, table["clean_accuracy"].round(4).tolist())),
        "whitebox_success": dict(zip(names, table["whitebox_success"].round(2).tolist())),
        "min_joint_correct": int(n_pairs.min()),
        "floored_pairs": floored,
        "structure": {"same_family_auc": shape.same_family_auc, "same_family_pairs": shape.n_same,
                      "cross_family_pairs": shape.n_cross, "twins_rank": [list(t) for t in shape.twins]},
        "bootstrap_ci": {"n_boot": n_boot, "seed": int(cfg.seed), "level": 0.95},
        "reused_sources": result.reused,
        "computed_sources": result.computed,
        "completed_sources": result.completed,
        "assembled": assemble,
        "zoo": {m.spec.name: m.info for m in loaded if m.info},
    }
    write_summary(out, cfg, timings, **summary)

    tracker.log({f"clean_accuracy/{k}": v for k, v in summary["clean_accuracy"].items()})
    tracker.log({f"whitebox_success/{k}": v for k, v in summary["whitebox_success"].items()})
    tracker.log_table("sat_matrix", pd.DataFrame(sat, index=names, columns=names))
    tracker.log_table("transfer_rates", pd.DataFrame(rates, index=names, columns=names))
    tracker.log_table("models", table.set_index("model"))
    tracker.log_image("heatmap", out / "heatmap.png")
    tracker.log_artifact("sat-records", "records", [out / f for f in (
        "records.npz", "sat_matrix.csv", "sat_ci.csv", "transfer_rates.csv", "models.csv", "summary.json")])
    tracker.summary({"timings_s": timings, "samples": summary["samples"], "attack_notes": list(attack.notes)})
    tracker.finish()

    if params.get("print_table", True):
        print_results(out, names, sat, table, floored, shape.line())
    return summary


def print_results(out: Path, names: list[str], sat: np.ndarray, table: pd.DataFrame, floored: list,
                  structure_line: str) -> None:
    """A short table on stdout: accuracy and white-box success per model, the matrix, where the files are."""
    pd.set_option("display.width", 200)
    print(table[["model", "family", "clean_accuracy", "whitebox_success"]].to_string(index=False, float_format="%.3f"))
    weak = table[table["whitebox_success"] < 90]
    if len(weak):
        print(f"note: white-box success < 90% for {', '.join(weak['model'])}: the attack may be too weak "
              "(raise attack.eps or attack.steps)")
    print("\nSAT matrix (natural log; ln 100 = 4.605):")
    print(pd.DataFrame(sat, index=names, columns=names).round(2).to_string())
    if floored:
        print(f"{len(floored)} floored pair(s) (0% transfer, SAT = ln eps_s): "
              + ", ".join(f"{a}/{b}" for a, b in floored[:10]) + (" ..." if len(floored) > 10 else "")
              + "; task=analyze keeps them from dominating (see its report)")
    print(f"structure: {structure_line}")
    print(f"\nresults in {out}")
