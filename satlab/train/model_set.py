"""Open a model set from its config: the one way every task gets its models (`satlab.models.ModelSet`).

Each model gets its source of weights here, the only place that knows all of them:

    model_set.trained_from=<run>   TrainedSource: the weights a task=train run fine-tuned (its manifest)
    a spec with train_seed         ZooSource: trained by satlab on the dataset, cached by content
    anything else                  TimmSource: timm pretrained weights, a checkpoint file, or seeded random init

    >>> models = open_model_set(cfg.model_set, data, seed=0, cache_dir="~/.cache/satlab")
    >>> with models.use(0) as model: ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from satlab.data import DatasetSplits
from satlab.models.model_set import ModelSet, TimmSource
from satlab.models.specs import model_specs, resolve_spec
from satlab.train.finetune import trained_sources
from satlab.train.zoo import ZooSource
from satlab.utils import plain


def open_model_set(
    model_set: Mapping[str, Any],
    data: DatasetSplits,
    seed: int,
    cache_dir: str | Path,
    trainer_cfg: Mapping[str, Any] | None = None,
    names: Sequence[str] | None = None,
    own_heads: bool = False,
) -> ModelSet:
    """The models of `model_set` (a model-set config) for `data`, checked, none built yet: `ModelSet.check()`
    names every model that fails (timm names and tags, class counts, recipes), then every pretrained download that
    cannot happen (offline), before anything is built, trained or downloaded.

    Args:
        model_set: the `model_set` config node (models, catalog, train recipe, trained_from, ...).
        data: the dataset the models are evaluated on (zoo models are also trained on its train split).
        seed: the run's seed (random init of untrained timm models).
        cache_dir: where zoo weights are cached.
        trainer_cfg: conf/trainer + conf/callbacks (`satlab.lightning.trainer_settings`) for zoo training.
        names: these models of the set (catalog names) instead of its `models` list.
        own_heads: keep each model's own classifier (pretrained head, a checkpoint's class count) instead of
            the dataset's class count: the source networks of fine-tuning.
    """
    cfg = plain(model_set)
    specs = model_specs(cfg) if names is None else [resolve_spec(cfg, n) for n in names]
    if cfg.get("trained_from"):
        sources: list[Any] = trained_sources(specs, cfg["trained_from"], None if own_heads else data, seed)
    else:
        classes = None if own_heads else data.num_classes
        sources = [ZooSource(s, data, cfg.get("train"), cache_dir, trainer_cfg) if s.train_seed is not None
                   else TimmSource(s, classes, data.resolution, seed) for s in specs]
    models = ModelSet(sources)
    models.check()
    return models
