"""task=distill: which teacher should a student architecture learn from, and does SAT predict the gain?

One student architecture (`distill.student`, a model of the model set), a pool of teachers (`distill.teachers`,
default every other model of the set; `distill.teacher=x` for one job per teacher with `-m`; with
`model_set.trained_from=<task=train run>` the teachers are the models that run fine-tuned on this dataset). For every seed in
`distill.seeds` the student is trained once without a teacher (the baseline) and once per teacher, from the same
initial weights with the same data order (satlab.train.distill). SAT to the student is measured against a
reference instance of the student architecture trained independently of the distillation runs: the zoo's own
instance when the student is a zoo model (its catalog entry, trained with the zoo recipe), else the student trained
without a teacher at `distill.reference_seed` (not one of the seeds). The SAT map of teachers + reference comes from
`distill.sat_matrix` when given, else from the SAT engine (per-source records cached under the cache dir).
Students are cached under `${paths.cache_dir}/distilled/`; a later run with every teacher collects a multirun's
students from the cache without training.

Outputs: distill_results.csv, gain_vs_sat.png, report.md, sat_matrix.csv (when computed), summary.json, a wandb run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import DictConfig

from satlab.models.factory import build_model, check_arch
from satlab.models.specs import ModelSpec, model_specs, resolve_spec
from satlab.models.wrapper import PixelModel
from satlab.sat import metric
from satlab.sat.engine import compute_records
from satlab.sat.records import read_matrix, write_matrix
from satlab.tasks.common import build, eval_data, open_models, output_dir, trainer_config, write_summary
from satlab.tasks.tracking import start_tracking
from satlab.train import Recipe, accuracy
from satlab.train.distill import student_training
from satlab.train.distill_results import answer, answer_lines, plot_gain_vs_sat, rank_correlation, report_section, \
    results_table
from satlab.utils import SatlabError, write_csv, write_text

log = logging.getLogger(__name__)


def _teacher_names(cfg: DictConfig, student: str) -> list[str]:
    params = cfg.distill
    if params.get("teacher"):
        names = [str(params.teacher)]
    elif params.get("teachers") is not None:  # [] is a list of none, not "every model"
        names = [str(n) for n in params.teachers]
        if not names:
            raise SatlabError("distill.teachers=[] lists no teacher; list at least one model, or leave it null for "
                              "every model of the model set but the student")
    else:
        names = [s.name for s in model_specs(cfg.model_set) if s.name != student]
    if student in names:
        raise SatlabError(f"distill: '{student}' is the student; it cannot also be a teacher")
    if not names or len(set(names)) != len(names):
        raise SatlabError("distill.teachers must list at least one model, each once")
    return names


def _student_builder(spec: ModelSpec, seed: int, num_classes: int, resolution: int) -> Callable[[], PixelModel]:
    """Random init of the student architecture at `seed` (seeded by seed and the student's name)."""
    untrained = replace(spec, pretrained=False, checkpoint_path=None)
    return lambda: build_model(untrained, num_classes, resolution, seed)


def run(cfg: DictConfig) -> dict:
    """Train the baseline and distilled students, measure SAT teacher -> student, write the results."""
    params = cfg.distill
    seeds = [int(s) for s in params.seeds]
    student = str(params.student)
    sspec = resolve_spec(cfg.model_set, student)
    check_arch(sspec.timm_name)
    teachers = _teacher_names(cfg, student)
    zoo_reference = sspec.train_seed is not None  # the zoo's own student; else one trained at reference_seed
    reference = student if zoo_reference else f"{student}@seed{int(params.reference_seed)}"
    if not zoo_reference and int(params.reference_seed) in seeds:
        raise SatlabError("distill.reference_seed must not be one of distill.seeds (the SAT reference is trained "
                          "independently of the distillation runs)")
    recipe = Recipe.from_config(params.recipe)
    given = _given_matrix(params.get("sat_matrix"), teachers + [reference])
    attack = build(cfg, "attack") if given is None else None
    out = output_dir(cfg)
    trainer_cfg = trainer_config(cfg)
    start = time.perf_counter()
    data = eval_data(cfg)
    models = open_models(cfg, data, names=teachers + ([student] if zoo_reference else []))
    timings = {"teachers": time.perf_counter() - start}

    tracker = start_tracking(cfg, "distill", out)
    start = time.perf_counter()
    train = partial(student_training, name=student, recipe=recipe, data=data, cache_dir=cfg.paths.cache_dir,
                    trainer_cfg=trainer_cfg, identity={"arch": sspec.timm_name, "model_args": dict(sspec.model_args)})
    builder = partial(_student_builder, sspec, num_classes=data.num_classes, resolution=data.resolution)
    baseline, accs, infos = train_students(models, teachers, seeds, train, builder, params)
    timings["students"] = time.perf_counter() - start

    start = time.perf_counter()
    if given is not None:
        order = {n: i for i, n in enumerate(given[0])}
        sat = [given[1][order[n], order[reference]] for n in teachers]
        teacher_acc = []
        for i in range(len(teachers)):
            with models.use(i) as teacher:
                teacher_acc.append(accuracy(teacher, data.eval))
    else:
        seed = int(params.reference_seed)
        pool = models if zoo_reference else models.with_model(reference, train(builder(seed), seed=seed).run()[0])
        result = compute_records(pool, data.eval, attack, seed=int(cfg.seed), batch_size=int(params.sat_batch_size),
                                 cache_dir=Path(cfg.paths.cache_dir), trainer_cfg=trainer_cfg)
        matrix = metric.sat_matrix(result.records.correct, result.records.fooled, float(params.eps_s))
        sat, teacher_acc = list(matrix[: len(teachers), -1]), list(result.records.correct[: len(teachers)].mean(1))
        write_matrix(out / "sat_matrix.csv", teachers + [reference], matrix)
    timings["sat"] = time.perf_counter() - start

    ref_text = (f"the zoo's own {student} (trained with the zoo recipe)" if zoo_reference
                else f"{student} trained without a teacher at seed {int(params.reference_seed)}")
    summary = {"student": student, "reference": ref_text, "teachers": teachers, "seeds": seeds,
               "model_keys": {n: models.key(i) for i, n in enumerate(teachers)},
               "alpha": float(params.alpha), "temperature": float(params.temperature), "mode": str(params.mode),
               "baseline_accuracy": baseline, "student_accuracy": accs, "runs": infos, "dataset_notes": data.notes,
               "sat_source": str(params.sat_matrix) if given is not None else "computed (records cache)",
               "gain_ci": "paired t-interval over seeds (95%)", "rho_ci": "percentile bootstrap over teachers (95%)"}
    return write_results(cfg, out, timings, tracker, results_table(teachers, sat, teacher_acc, accs, baseline), summary)


def train_students(models, teachers: list[str], seeds: list[int], train, builder, params) -> tuple[list, dict, list]:
    """The baseline student at every seed, then every teacher's distilled student at every seed (one teacher built
    at a time). Returns the baseline accuracies, each teacher's accuracies and a row per run."""
    baseline, accs, infos = [], {n: [] for n in teachers}, []
    for seed in seeds:
        _, info = train(builder(seed), seed=seed).run()
        baseline.append(float(info["test_accuracy"]))
        infos.append({"teacher": None, "seed": seed, **_brief(info)})
        print(f"seed {seed}: baseline {info['test_accuracy']:.4f}" + (" (cached)" if info["cached"] else ""))
    for i, name in enumerate(teachers):
        with models.use(i) as teacher:
            for seed in seeds:
                _, info = train(builder(seed), seed=seed, teachers=[teacher], alpha=params.alpha,
                                temperature=params.temperature, mode=str(params.mode)).run()
                accs[name].append(float(info["test_accuracy"]))
                infos.append({"teacher": name, "seed": seed, **_brief(info)})
                print(f"seed {seed}: teacher {name} {info['test_accuracy']:.4f}"
                      + (" (cached)" if info["cached"] else ""))
    return baseline, accs, infos


def write_results(cfg: DictConfig, out: Path, timings: dict, tracker, table, summary: dict) -> dict:
    """distill_results.csv, gain_vs_sat.png, report.md, summary.json, wandb and the console's answer."""
    params, student, baseline = cfg.distill, summary["student"], summary["baseline_accuracy"]
    corr = rank_correlation(table["sat_to_student"], table["gain_mean"], int(params.n_boot), int(cfg.seed))
    ans = answer(table)
    write_csv(out / "distill_results.csv", table)
    plot_gain_vs_sat(table, corr, out / "gain_vs_sat.png", student)
    write_text(out / "report.md", "# satlab distillation report\n\n"
               + report_section(table, corr, ans, student, baseline, summary["reference"]))
    summary |= {"rank_correlation": corr, "answer": ans}
    write_summary(out, cfg, timings, **summary)
    tracker.log({"baseline_accuracy": float(np.mean(baseline)), "rho_gain_sat": corr["rho"]})
    tracker.log_table("distill_results", table.set_index("teacher"))
    tracker.log_image("gain_vs_sat", out / "gain_vs_sat.png")
    tracker.summary({"rank_correlation": corr, "answer": ans, "timings_s": timings})
    tracker.finish()

    print(table.to_string(index=False, float_format="%.3f"))
    print(f"\nstudent {student}: baseline accuracy {np.mean(baseline):.4f} over seeds {summary['seeds']}")
    for line in answer_lines(ans, corr):
        print(line)
    print(f"results in {out}")
    return summary


def _given_matrix(path, needed: list[str]):
    """`distill.sat_matrix` read and checked to hold every teacher and the reference; None when not given."""
    if not path:
        return None
    given = read_matrix(path, symmetric_tol=1e-6, sat=True)
    missing = [n for n in needed if n not in given[0]]
    if missing:
        raise SatlabError(f"distill.sat_matrix lacks {', '.join(missing)}; give a matrix with every teacher "
                          "and the reference, or leave distill.sat_matrix unset to compute it")
    return given


def _brief(info: dict) -> dict:
    return {k: info.get(k) for k in ("test_accuracy", "cached", "train_seconds", "key")}
