"""task=sat (the main job): open the model set, run the SAT engine, write every output file.

Outputs in the run dir: records.npz, sat_matrix.csv (the paper's format), sat_ci.csv (per pair: SAT, bootstrap
95% CI over images, |X_AB|, both transfer rates, floored), transfer_rates.csv, models.csv, heatmap.png,
summary.json; and a wandb run (offline by default) with config, accuracies, tables and artifacts.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from satlab.analysis.plots import plot_sat_heatmap
from satlab.analysis.structure import Structure, structure
from satlab.models import COMPONENTS, ModelSet, model_specs
from satlab.sat import metric
from satlab.sat.assemble import assemble_records
from satlab.sat.engine import compute_records
from satlab.sat.precision import check_reachable, lowest_rate, parse_precision
from satlab.sat.records import Records, save_records, write_matrix
from satlab.sat.runtime import check_budget
from satlab.sat.schedule import Tile, job_tile, parse_budget, tile_list
from satlab.tasks import tile_status
from satlab.tasks.common import (build, decode_eval, eval_data, open_models, output_dir, short_classes,
                                 trainer_config, write_summary)
from satlab.tasks.tracking import start_tracking
from satlab.utils import SatlabError, check_writable_dir, plain, write_csv

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Compute the SAT matrix of `cfg.model_set` on `cfg.dataset` under `cfg.attack`."""
    params = cfg.sat
    check_writable_dir(cfg.paths.cache_dir, "paths.cache_dir")
    out = output_dir(cfg)
    assemble, status = bool(params.assemble), bool(params.get("status", False))
    tile, tiles = job_of(cfg, model_specs_names(cfg), assemble, status)
    budget = parse_budget(params.memory_budget)
    attack = build(cfg, "attack")
    start = time.perf_counter()
    data = eval_data(cfg, attack)
    precision = stated_precision(params, len(data.eval))  # before any decoding or model work
    asked = OmegaConf.select(cfg, "dataset.samples_per_class", default=None)
    cache = Path(cfg.paths.cache_dir) if params.resume else None
    decode_eval(data, cache, params.num_workers)  # before any model work; the pixel file once the models are checked
    timings = {"data": time.perf_counter() - start}
    log.info("attack %s", attack.summary())  # the budget used; attack.notes say what was adjusted
    start = time.perf_counter()
    models = open_models(cfg, data)
    check_budget(models, budget)  # from the architectures: before any model is trained or loaded
    keys = models.keys()
    timings["models"] = time.perf_counter() - start
    if status:  # where a tiled map stands, from the cache: no model runs, no result file is written
        return tile_status.show(cfg, models.names, keys, attack, data.eval, tiles)  # type: ignore[arg-type]
    if tile is not None and tile.index is not None:  # a tile of sat.tiles: where its job runs, for sat.status
        tile_status.record_this_job(cfg, models.names, keys, attack, data.eval, tile, out)

    start = time.perf_counter()
    engine = dict(seed=int(cfg.seed), trainer_cfg=trainer_config(cfg), precision=precision)
    if assemble:  # before tracking: missing rows stop the run with nothing written
        result = assemble_records(models.names, keys, data.eval, attack, cfg.paths.cache_dir, tiles=tiles, **engine)
    tracker = start_tracking(cfg, "sat", out)
    if not assemble:
        result = compute_records(
            models, data.eval, attack, batch_size=int(params.batch_size), num_workers=params.num_workers,
            cache_dir=cache, tile=tile, store_adversarial=bool(params.store_adversarial), memory_budget=budget,
            first_round=int(params.first_round), **engine)
    timings["engine"] = time.perf_counter() - start
    timings.update(result.timings)
    progress = {"reused_sources": result.reused, "computed_sources": result.computed,
                "completed_sources": result.completed, "records_context": result.context,
                "target_blocks": result.blocks, "cache_disk_mib": round(result.disk_bytes / 2**20, 2),
                "engine_time": result.data_path, "engine_work": result.work}
    if result.records is None:  # a tile: its rows are in the cache
        progress["dataset_notes"] = data.notes
        return tile_done(cfg, out, tracker, timings, tile, progress)  # type: ignore[arg-type]

    tick = time.perf_counter()
    results = write_map(out, result.records, models, float(params.eps_s), int(params.n_bootstrap), int(cfg.seed),
                        map_title(str(cfg.model_set.name), data.name, attack, len(result.records.sample_ids)),
                        more_images=asked is not None and short_classes(data, asked) is None, precision=precision)
    timings["outputs"] = time.perf_counter() - tick
    summary = {**results.summary(models, keys), "attack": attack.describe(), "attack_notes": list(attack.notes),
               "bootstrap_ci": {"n_boot": int(params.n_bootstrap), "seed": int(cfg.seed), "level": 0.95},
               "assembled": assemble, "dataset_notes": data.notes, **progress,
               "precision": results.precision_summary(precision, int(params.first_round))}
    write_summary(out, cfg, timings, **summary)
    results.track(tracker, out, timings, attack.notes)
    if params.print_table:
        results.print(out)
    return summary


def map_title(model_set: str, dataset: str, attack, n_images: int) -> str:
    """The heatmap's title: what was compared, on how many images, under which attack.

    Args:
        model_set, dataset: their names.
        attack: the attack as it ran (`satlab.attacks.Attack`: name, norm, the budget used, steps).
        n_images: the evaluation images (S).

    >>> from satlab.attacks import create_attack
    >>> map_title("digits_zoo", "digits", create_attack("pgd_linf", eps=16 / 255), 360)
    'SAT: digits_zoo on digits (360 images)\npgd_linf, L-inf eps=16/255, 10 steps'
    """
    norm = {"linf": "L-inf", "l2": "L2"}.get(attack.norm, attack.norm)
    levels = attack.eps * 255
    on_grid = attack.norm == "linf" and abs(levels - round(levels)) < 1e-6
    eps = f"{round(levels)}/255" if on_grid else f"{attack.eps:.4g}"
    steps = f"{attack.steps} step{'s' if attack.steps != 1 else ''}"
    return f"SAT: {model_set} on {dataset} ({n_images} images)\n{attack.name}, {norm} eps={eps}, {steps}"


def stated_precision(params: DictConfig, images: int) -> float | None:
    """`sat.precision` checked against the map's `images` (SatlabError when no pair could reach it), and what to
    expect on the console: the transfer rates below which pairs use every image without reaching it."""
    precision = parse_precision(params.get("precision"))
    if precision is None:
        return None
    check_reachable(precision, images)
    log.info("sat.precision=%g: each pair takes images (%d, then doubling, of %d in a seeded order) until its 95%% "
             "interval is within +-%g ln units; pairs transferring less than about %.1f %% of the time use every image "
             "and are marked as not reaching it", precision, min(int(params.first_round), images), images, precision,
             100 * lowest_rate(precision, images))
    return precision


def job_of(cfg: DictConfig, names: list[str], assemble: bool, status: bool = False
           ) -> tuple[Tile | None, list[Tile] | None]:
    """This job's tile (None: the whole map) from `sat.shard` / `sat.tiles` + `sat.tile`, and the list of tiles
    (checked to cover the map once), checked against `sat.assemble`, `sat.status` and `sat.resume`."""
    params = cfg.sat
    tiles = plain(params.tiles)
    if status:
        if assemble or tiles is None or plain(params.tile) is not None or plain(params.shard) not in (None, ""):
            raise SatlabError("sat.status=true shows the tiles of a tiled map: give the sat.tiles of its sweep "
                              "(e.g. sat.tiles=8x1), without sat.tile, sat.shard or sat.assemble")
        return None, tile_list(names, tiles)
    tile = job_tile(names, plain(params.shard), tiles, plain(params.tile), assemble)
    if (assemble or tile is not None) and not params.resume:
        raise SatlabError("sat.shard, sat.tiles and sat.assemble meet in the records cache: set sat.resume=true")
    return tile, (tile_list(names, tiles) if tiles is not None else None)


def tile_done(cfg: DictConfig, out: Path, tracker, timings: dict, tile: Tile, progress: dict) -> dict:
    """A tile's (or shard's) end: its rows are in the cache; the summary says which pairs it holds."""
    shard = list(tile.sources) if tile.targets == tuple(model_specs_names(cfg)) else None
    info = {"shard": shard, "tile": {"index": tile.index, "sources": list(tile.sources),
                                     "targets": list(tile.targets)}}
    write_summary(out, cfg, timings, **info, **progress)
    tracker.summary({"timings_s": timings, **info})
    tracker.finish()
    print(f"{tile.describe()} done: its rows are in {Path(cfg.paths.cache_dir) / 'records'}; when every tile is "
          "done, run the same command with sat.assemble=true (and no sat.shard / sat.tile)")
    return progress


def model_specs_names(cfg: DictConfig) -> list[str]:
    return [s.name for s in model_specs(cfg.model_set)]


class MapResults:
    """A map's derived tables (matrix, rates, per-pair CIs, per-model table, structure), from its records."""

    def __init__(self, records: Records, models: ModelSet, eps_s: float, n_boot: int, seed: int,
                 more_images: bool = True, precision: float | None = None) -> None:
        self.records, self.names = records, records.models
        scope = records.scope()  # a map at a stated precision: the images each pair used
        with warnings.catch_warnings(record=True):  # said below in plain words, without Python's source line
            warnings.simplefilter("always", RuntimeWarning)
            self.sat = metric.sat_matrix(records.correct, records.fooled, eps_s, scope)
        self.joint = metric.joint_correct(records.correct, scope)
        empty = int(np.triu(self.joint == 0, 1).sum())
        if empty:
            more = ("more images (dataset.samples_per_class)" if more_images else
                    "more images in the dataset (raising dataset.samples_per_class adds none)")
            log.warning("%d of %d model pair(s) have no image both models classify correctly (empty X_AB): their SAT "
                        "is NaN and the analyses leave them out; %s or more accurate models give them a value",
                        empty, len(self.names) * (len(self.names) - 1) // 2, more)
        self.rates = metric.transfer_rates(records.correct, records.fooled, scope)
        self.table = models_table(models, records.correct, np.diagonal(self.rates))
        self.pairs = pd.DataFrame(metric.pair_table(self.names, records.correct, records.fooled, eps_s,
                                                    records.images_used, scope, precision, n_boot=n_boot, seed=seed))
        self.floored = self.pairs.loc[self.pairs["floored"], ["model_a", "model_b"]].to_numpy().tolist()
        self.floor_mask = metric.floored(self.sat, eps_s)
        self.shape: Structure = structure(self.sat, self.names, [s.family for s in models.specs],
                                          [f"{s.timm_name} {sorted(s.model_args.items())}" for s in models.specs])

    def summary(self, models: ModelSet, keys: list[str]) -> dict:
        table, shape = self.table, self.shape
        return {
            "models": self.names,
            "model_keys": dict(zip(models.names, keys)),  # weights + preprocessing: what later tasks match on
            "samples": int(len(self.records.sample_ids)),
            "clean_accuracy": dict(zip(self.names, table["clean_accuracy"].round(4).tolist())),
            "whitebox_success": dict(zip(self.names, table["whitebox_success"].round(2).tolist())),
            "min_joint_correct": int(self.joint.min()),
            "floored_pairs": self.floored,
            "structure": {"same_family_auc": shape.same_family_auc, "same_family_pairs": shape.n_same,
                          "cross_family_pairs": shape.n_cross, "twins_rank": [list(t) for t in shape.twins],
                          "pairs_without_value": shape.missing_same + shape.missing_cross},
            "zoo": {name: models.info(i) for i, name in enumerate(models.names) if models.info(i)},
        }

    def precision_summary(self, precision: float | None, first_round: int) -> dict | None:
        """summary.json's `precision` (a map at a stated precision), said on the console too: how many pairs
        reached h, which used every image without reaching it, and the images the pairs used."""
        if self.records.images_used is None:
            return None
        pairs, total = self.pairs, len(self.records.sample_ids)
        short = pairs[~pairs["reached_h"]] if "reached_h" in pairs else pairs.iloc[:0]
        info = {"h": precision, "first_round": first_round, "pairs": len(pairs),
                "reached_h": int(len(pairs) - len(short)),
                "not_reached": [[a, b] for a, b in short[["model_a", "model_b"]].to_numpy().tolist()],
                "images_used_mean": round(float(pairs["images_used"].mean()), 1) if len(pairs) else 0.0,
                "images": total}
        if precision is not None:
            log.info("sat.precision=%g: %d of %d pair(s) reached it, on %.0f of %d images on average; %d used every "
                     "image without reaching it%s (sat_ci.csv: images_used, half_width, reached_h)", precision,
                     info["reached_h"], len(pairs), info["images_used_mean"], total, len(short),
                     " (" + ", ".join(f"{a}/{b}" for a, b in info["not_reached"][:6])
                     + (" ..." if len(short) > 6 else "") + ")" if len(short) else "")
        return info

    def track(self, tracker, out: Path, timings: dict, notes) -> None:
        names = self.names
        tracker.log({f"clean_accuracy/{k}": v for k, v in zip(names, self.table["clean_accuracy"].round(4))})
        tracker.log({f"whitebox_success/{k}": v for k, v in zip(names, self.table["whitebox_success"].round(2))})
        tracker.log_table("sat_matrix", pd.DataFrame(self.sat, index=names, columns=names))
        tracker.log_table("transfer_rates", pd.DataFrame(self.rates, index=names, columns=names))
        tracker.log_table("models", self.table.set_index("model"))
        tracker.log_image("heatmap", out / "heatmap.png")
        tracker.log_artifact("sat-records", "records", [out / f for f in (
            "records.npz", "sat_matrix.csv", "sat_ci.csv", "transfer_rates.csv", "models.csv", "summary.json")])
        tracker.summary({"timings_s": timings, "samples": len(self.records.sample_ids), "attack_notes": list(notes)})
        tracker.finish()

    def print(self, out: Path) -> None:
        """A short table on stdout: accuracy and white-box success per model, the matrix, where the files are."""
        table, names, floored = self.table, self.names, self.floored
        pd.set_option("display.width", 200)
        print(table[["model", "family", "clean_accuracy", "whitebox_success"]].to_string(index=False,
                                                                                       float_format="%.3f"))
        weak = table[table["whitebox_success"] < 90]
        if len(weak):
            print(f"note: white-box success < 90% for {', '.join(weak['model'])}: the attack may be too weak "
                  "(raise attack.eps or attack.steps)")
        print("\nSAT matrix (natural log; ln 100 = 4.605):")
        print(pd.DataFrame(self.sat, index=names, columns=names).round(2).to_string())
        if floored:
            print(f"{len(floored)} floored pair(s) (0% transfer, SAT = ln eps_s): "
                  + ", ".join(f"{a}/{b}" for a, b in floored[:10]) + (" ..." if len(floored) > 10 else "")
                  + "; task=analyze keeps them from dominating (see its report)")
        print(f"structure: {self.shape.line()}")
        print(f"\nresults in {out}")


def write_map(out: Path, records: Records, models: ModelSet, eps_s: float, n_boot: int, seed: int,
              title: str, more_images: bool = True, precision: float | None = None) -> MapResults:
    """Derive the map's tables from `records` and write them (records.npz, matrices, CSVs, heatmap);
    `more_images` False: the dataset has no more images to give (its closing advice says so); `precision`: the h
    of a map at a stated precision (sat_ci.csv says which pairs reached it)."""
    results = MapResults(records, models, eps_s, n_boot, seed, more_images, precision)
    save_records(out / "records.npz", records)
    write_matrix(out / "sat_matrix.csv", results.names, results.sat)
    write_matrix(out / "transfer_rates.csv", results.names, results.rates)
    write_csv(out / "models.csv", results.table)
    write_csv(out / "sat_ci.csv", results.pairs, float_format="%.10g")
    plot_sat_heatmap(results.names, results.sat, out / "heatmap.png", title=title, floored=results.floor_mask)
    return results


def models_table(models: ModelSet, correct: np.ndarray, whitebox: np.ndarray) -> pd.DataFrame:
    """models.csv: model, family, clean accuracy, white-box success, then the known components."""
    rows = []
    for i, spec in enumerate(models.specs):
        row = {"model": spec.name, "family": spec.family,
               "clean_accuracy": float(correct[i].mean()) if correct.shape[1] else float("nan"),
               "whitebox_success": float(whitebox[i]), "timm_name": spec.timm_name}
        row.update({c: spec.components.get(c, "") for c in COMPONENTS})
        rows.append(row)
    return pd.DataFrame(rows)
