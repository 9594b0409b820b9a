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
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from satlab.models.factory import check_arch, check_classes, create_timm, data_overrides
from satlab.models.loading import load_models
from satlab.models.specs import ModelSpec, model_specs, resolve_spec
from satlab.models.wrapper import PixelModel
from satlab.models.zoo import zoo_recipe
from satlab.sat import metric
from satlab.sat.engine import compute_records
from satlab.sat.records import read_matrix, write_matrix
from satlab.tasks.common import build, output_dir, write_summary
from satlab.tasks.tracking import start_tracking
from satlab.train import Recipe, engine_trainer_kwargs
from satlab.train.distill import accuracy, check_distill, student_or_load
from satlab.train.finetune import load_trained
from satlab.train.distill_results import answer, answer_lines, plot_gain_vs_sat, rank_correlation, report_section, \
    results_table
from satlab.utils import SatlabError, write_csv, write_text

log = logging.getLogger(__name__)


def _teacher_names(cfg: DictConfig, student: str) -> list[str]:
    params = cfg.distill
    if params.get("teacher"):
        names = [str(params.teacher)]
    elif params.get("teachers"):
        names = [str(n) for n in params.teachers]
    else:
        names = [s.name for s in model_specs(cfg.model_set) if s.name != student]
    if student in names:
        raise SatlabError(f"distill: '{student}' is the student; it cannot also be a teacher")
    if not names or len(set(names)) != len(names):
        raise SatlabError("distill.teachers must list at least one model, each once")
    return names


def _student_builder(spec: ModelSpec, seed: int, num_classes: int, resolution: int):
    """Random init of the student architecture at `seed` (seeded by seed and the student's name)."""
    size = spec.input_size or ("dataset" if spec.train_seed is not None else None)
    return lambda: PixelModel.from_timm(create_timm(replace(spec, pretrained=False), num_classes, seed),
                                        data_overrides(replace(spec, input_size=size), resolution))


def run(cfg: DictConfig) -> dict:
    """Train the baseline and distilled students, measure SAT teacher -> student, write the results."""
    params = cfg.distill
    alpha, temperature, mode = params.alpha, params.temperature, str(params.mode)
    check_distill(alpha, temperature, mode)
    seeds = [int(s) for s in params.seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise SatlabError(f"distill.seeds must list distinct seeds, got {seeds}")
    student = str(params.student)
    sspec = resolve_spec(cfg.model_set, student)
    check_arch(sspec.timm_name)
    teachers = _teacher_names(cfg, student)
    tspecs = [resolve_spec(cfg.model_set, n) for n in teachers]
    zoo_reference = sspec.train_seed is not None
    reference = student if zoo_reference else f"{student}@seed{int(params.reference_seed)}"
    if not zoo_reference and int(params.reference_seed) in seeds:
        raise SatlabError("distill.reference_seed must not be one of distill.seeds (the SAT reference is trained "
                          "independently of the distillation runs)")
    recipe = Recipe.from_config(OmegaConf.to_container(params.recipe, resolve=True))
    for spec in tspecs + ([sspec] if zoo_reference else []):
        check_arch(spec.timm_name)
        if spec.train_seed is not None:
            zoo_recipe(spec, cfg.model_set.get("train"))
    given = None
    if params.get("sat_matrix"):
        given = read_matrix(params.sat_matrix, symmetric_tol=1e-6)
        missing = [n for n in teachers + [reference] if n not in given[0]]
        if missing:
            raise SatlabError(f"distill.sat_matrix lacks {', '.join(missing)}; give a matrix with every teacher "
                              "and the reference, or leave distill.sat_matrix unset to compute it")
    attack = build(cfg, "attack") if given is None else None
    out = output_dir(cfg)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    data = build(cfg, "dataset")
    for spec in tspecs:
        check_classes(spec, data.num_classes)
    ref_specs = [sspec] if zoo_reference else []
    if cfg.model_set.get("trained_from"):  # teachers fine-tuned on this dataset by a task=train run
        loaded = load_trained(tspecs + ref_specs, cfg.model_set.trained_from, data, int(cfg.seed))
    else:
        loaded = load_models(tspecs + ref_specs, data, int(cfg.seed), cfg.paths.cache_dir,
                             cfg.model_set.get("train"), trainer_cfg)
    for item in loaded[: len(tspecs)]:
        classes = getattr(item.model.model, "num_classes", data.num_classes)
        if classes != data.num_classes:
            raise SatlabError(f"teacher '{item.spec.name}' predicts {classes} classes but dataset '{data.name}' has "
                              f"{data.num_classes}; a teacher must predict the student's classes")
    timings["teachers"] = time.perf_counter() - start

    tracker = start_tracking(cfg, "distill", out)
    identity = {"arch": sspec.timm_name, "model_args": dict(sspec.model_args)}
    common = (student, recipe, data, cfg.paths.cache_dir, trainer_cfg)
    start = time.perf_counter()
    models = [m.model for m in loaded]
    if not zoo_reference:
        ref, _ = student_or_load(_student_builder(sspec, int(params.reference_seed), data.num_classes,
                                                  data.resolution), *common, int(params.reference_seed), identity)
        models.append(ref)
    baseline, accs, infos = [], {n: [] for n in teachers}, []
    for seed in seeds:
        builder = _student_builder(sspec, seed, data.num_classes, data.resolution)
        _, info = student_or_load(builder, *common, seed, identity)
        baseline.append(float(info["test_accuracy"]))
        infos.append({"teacher": None, "seed": seed, **_brief(info)})
        print(f"seed {seed}: baseline {info['test_accuracy']:.4f}" + (" (cached)" if info["cached"] else ""))
        for item in loaded[: len(tspecs)]:
            _, info = student_or_load(builder, *common, seed, identity, teachers=[item.model], alpha=alpha,
                                      temperature=temperature, mode=mode)
            accs[item.spec.name].append(float(info["test_accuracy"]))
            infos.append({"teacher": item.spec.name, "seed": seed, **_brief(info)})
            print(f"seed {seed}: teacher {item.spec.name} {info['test_accuracy']:.4f}"
                  + (" (cached)" if info["cached"] else ""))
    timings["students"] = time.perf_counter() - start

    start = time.perf_counter()
    if given is not None:
        order = {n: i for i, n in enumerate(given[0])}
        sat = [given[1][order[n], order[reference]] for n in teachers]
        teacher_acc = [accuracy(item.model, data.eval) for item in loaded[: len(tspecs)]]
    else:
        result = compute_records(models, teachers + [reference], [m.fingerprint() for m in models], data.eval,
                                 attack, seed=int(cfg.seed), batch_size=int(params.sat_batch_size),
                                 cache_dir=Path(cfg.paths.cache_dir), trainer_kwargs=engine_trainer_kwargs(trainer_cfg))
        matrix = metric.sat_matrix(result.records.correct, result.records.fooled, float(params.eps_s))
        sat = list(matrix[: len(teachers), -1])
        write_matrix(out / "sat_matrix.csv", teachers + [reference], matrix)
        teacher_acc = list(result.records.correct[: len(teachers)].mean(1))
    timings["sat"] = time.perf_counter() - start

    table = results_table(teachers, sat, teacher_acc, accs, baseline)
    corr = rank_correlation(table["sat_to_student"], table["gain_mean"], int(params.n_boot), int(cfg.seed))
    ans = answer(table)
    write_csv(out / "distill_results.csv", table)
    plot_gain_vs_sat(table, corr, out / "gain_vs_sat.png", student)
    ref_text = (f"the zoo's own {student} (trained with the zoo recipe)" if zoo_reference
                else f"{student} trained without a teacher at seed {int(params.reference_seed)}")
    write_text(out / "report.md", "# satlab distillation report\n\n"
               + report_section(table, corr, ans, student, baseline, ref_text))
    summary = {"student": student, "reference": ref_text, "teachers": teachers, "seeds": seeds, "alpha": float(alpha),
               "temperature": float(temperature), "mode": mode, "baseline_accuracy": baseline,
               "student_accuracy": accs, "rank_correlation": corr, "answer": ans, "runs": infos,
               "sat_source": str(params.sat_matrix) if given is not None else "computed (records cache)",
               "gain_ci": "paired t-interval over seeds (95%)", "rho_ci": "percentile bootstrap over teachers (95%)"}
    write_summary(out, cfg, timings, **summary)
    tracker.log({"baseline_accuracy": float(np.mean(baseline)), "rho_gain_sat": corr["rho"]})
    tracker.log_table("distill_results", table.set_index("teacher"))
    tracker.log_image("gain_vs_sat", out / "gain_vs_sat.png")
    tracker.summary({"rank_correlation": corr, "answer": ans, "timings_s": timings})
    tracker.finish()

    print(table.to_string(index=False, float_format="%.3f"))
    print(f"\nstudent {student}: baseline accuracy {np.mean(baseline):.4f} over seeds {seeds}")
    for line in answer_lines(ans, corr):
        print(line)
    print(f"results in {out}")
    return summary


def _brief(info: dict) -> dict:
    return {k: info.get(k) for k in ("test_accuracy", "cached", "train_seconds", "key")}
