"""task=cross_dataset: do a model set's similarities carry over to a new dataset? (the paper's ImageNet ->
Flowers-102 check). Four steps, each an ordinary task run in its own sub-folder of the run dir:

  source/   task=sat on `train.source_dataset` (the dataset the models were trained on)  [skipped when
            cross.source_matrix is given, e.g. the paper's released ImageNet matrix; with neither, the run
            stops after the target map]
  train/    task=train: every model fine-tuned onto `dataset` (the target) with a new head
  target/   task=sat on the target with model_set.trained_from=train/
  compare/  task=compare of the two maps: Spearman / Kendall of the pairs, Mantel p, ARI
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from satlab.tasks import get_task
from satlab.tasks.common import output_dir, write_summary
from satlab.utils import SatlabError


def step(cfg: DictConfig, task: str, out: Path, **changes: Any) -> dict:
    """Run `task` with the run's config, its output in `out`, and dotted-key `changes`."""
    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(sub):
        sub.task.name = task
        sub.paths.output_dir = str(out)
        for key, value in changes.items():
            OmegaConf.update(sub, key, value, merge=False)
    print(f"--- {task} -> {out}")
    return get_task(task)(sub)


def cached_note(infos: dict) -> str:
    cached = sum(1 for info in infos.values() if info.get("cached"))
    return f"{cached}/{len(infos)} from the cache"


def run(cfg: DictConfig) -> dict:
    """Source map (or a given matrix), fine-tune onto the target, target map, comparison."""
    out = output_dir(cfg)
    given = cfg.cross.get("source_matrix")
    notes: dict[str, Any] = {}
    source_matrix = None
    if given:
        source_matrix, source_label = str(given), str(cfg.cross.source_label)
        if not Path(source_matrix).is_file():
            raise SatlabError(f"cross.source_matrix '{source_matrix}' not found; give a sat_matrix.csv or null")
    elif cfg.train.get("source_dataset") is not None:
        source = step(cfg, "sat", out / "source", dataset=cfg.train.source_dataset, **{"model_set.trained_from": None})
        notes["source_models"] = cached_note(source.get("zoo", {})) if source.get("zoo") else "not trained by satlab"
        source_matrix, source_label = str(out / "source" / "sat_matrix.csv"), str(cfg.train.source_dataset.name)
    trained = step(cfg, "train", out / "train")
    notes["fine_tuned"] = cached_note(trained["models"])
    step(cfg, "sat", out / "target", **{"model_set.trained_from": str(out / "train")})
    target_label = str(cfg.dataset.name)
    if source_matrix is None:
        print("no source map (cross.source_matrix and train.source_dataset are null): nothing to compare; "
              f"the target map is in {out / 'target'}")
        write_summary(out, cfg, {}, steps=["train", "target"], notes=notes)
        return notes
    result = step(cfg, "compare", out / "compare", **{"compare.a": source_matrix, "compare.b": str(out / "target"),
                                                      "compare.label_a": source_label,
                                                      "compare.label_b": target_label})
    write_summary(out, cfg, {}, steps=["source", "train", "target", "compare"], notes=notes, comparison=result)
    print(f"\ncross-dataset ({source_label} -> {target_label}, {result['n_models']} models): Spearman rho = "
          f"{result['spearman']:.3f}, Mantel p = {result['mantel_p']:.3g}; Kendall tau = {result['kendall']:.3f}; "
          f"ARI = {result['ari']:.3f}. Models: " + "; ".join(f"{k}: {v}" for k, v in notes.items()))
    return {"comparison": result, **notes}
