"""Fine-tuning: a source network (pretrained, checkpoint, a zoo model or random init) with a new head, and the
manifest of a trained model set that `task=sat` reads back (`model_set.trained_from=<task=train run dir>`).
"""

from __future__ import annotations

import copy
import json
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from satlab.data import DatasetSplits
from satlab.models.factory import build_model, wrap
from satlab.models.specs import ModelSpec
from satlab.models.wrapper import PixelModel
from satlab.utils import SatlabError

MANIFEST = "trained_models.json"


def with_new_head(source: nn.Module, spec: ModelSpec, num_classes: int, resolution: int, seed: int) -> PixelModel:
    """A copy of timm network `source` whose classifier is re-initialised for `num_classes` (seeded by seed and
    name), wrapped for the dataset's pixels (in training mode): the start of a fine-tuning run."""
    model = copy.deepcopy(source)
    if not hasattr(model, "reset_classifier"):
        raise SatlabError(f"model '{spec.name}' has no known classifier head (timm's reset_classifier), so it "
                          "cannot get a head for the new dataset")
    torch.manual_seed(zlib.crc32(f"{seed}:{spec.name}:head".encode()))
    model.reset_classifier(num_classes)
    return wrap(model, spec, resolution).train()


def write_manifest(path: Path, data: DatasetSplits, data_key: str, mode: str, models: dict[str, Any]) -> Path:
    """trained_models.json: where each trained model's weights are and what they were trained for."""
    from satlab.utils import write_json

    return write_json(path, {"dataset": data.name, "train_data": data_key, "num_classes": data.num_classes,
                             "resolution": data.resolution, "mode": mode, "models": models})


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The manifest of a task=train run dir (or the manifest file itself)."""
    path = Path(run_dir).expanduser()
    path = path / MANIFEST if path.is_dir() else path
    if not path.is_file():
        raise SatlabError(f"model_set.trained_from: '{path}' not found; point it at the run dir of a task=train run")
    fix = "point model_set.trained_from at the run dir of a finished task=train run, or rerun task=train"
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:  # not JSON, cut short, not text
        raise SatlabError(f"model_set.trained_from: '{path}' is not a readable manifest ({err}); {fix}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise SatlabError(f"model_set.trained_from: '{path}' is not a task=train manifest ({problem}); {fix}")
    return manifest


MANIFEST_KEYS = {"dataset": str, "num_classes": int, "resolution": int, "models": dict}
ENTRY_KEYS = ("weights", "fingerprint", "input_size")


def _manifest_problem(manifest: Any) -> str | None:
    """What a parsed manifest lacks (`write_manifest`'s keys, each model's weights, fingerprint and input size),
    or None when it has them all."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        return f"no {', '.join(missing)}"
    wrong = [k for k, kind in MANIFEST_KEYS.items()
             if not isinstance(manifest[k], kind) or isinstance(manifest[k], bool)]
    if wrong:
        return f"{', '.join(wrong)} of the wrong type"
    for name, entry in manifest["models"].items():
        lacking = [k for k in ENTRY_KEYS if not isinstance(entry, dict) or k not in entry]
        if lacking:
            return f"model '{name}' has no {', '.join(lacking)}"
    return None


class TrainedSource:
    """A model as a task=train run fine-tuned it (`model_set.trained_from`): a model-set source whose content key
    is the manifest's fingerprint, checked when the weights are loaded.

    Args:
        spec: the model as the model set describes it.
        entry: its entry in the run's manifest (`trained_models.json`).
        manifest: the whole manifest (class count and resolution the model was trained for).
        seed: the run's seed (a checkpoint load draws no random numbers; kept for the builder's signature).
    """

    def __init__(self, spec: ModelSpec, entry: Mapping[str, Any], manifest: Mapping[str, Any], seed: int = 0) -> None:
        self.entry, self.manifest, self.seed = entry, manifest, seed
        self.spec = replace(spec, checkpoint_path=str(entry["weights"]), pretrained=False, train_seed=None,
                            input_size=entry["input_size"])

    def check(self) -> None:
        if not Path(self.entry["weights"]).is_file():
            raise SatlabError(f"model '{self.spec.name}': trained weights {self.entry['weights']} are gone (cache "
                              "cleared?); rerun task=train")

    def stored_key(self) -> str | None:
        return str(self.entry["fingerprint"])

    def load(self) -> tuple[PixelModel, dict[str, Any]]:
        model = build_model(self.spec, int(self.manifest["num_classes"]), int(self.manifest["resolution"]), self.seed)
        if model.fingerprint() != self.entry["fingerprint"]:
            raise SatlabError(f"model '{self.spec.name}': weights at {self.entry['weights']} do not match the "
                              "manifest's fingerprint")
        return model, {k: v for k, v in self.entry.items() if k != "recipe"}


def trained_sources(specs: Sequence[ModelSpec], run_dir: str | Path, data: DatasetSplits | None,
                    seed: int = 0) -> list[TrainedSource]:
    """The sources of a task=train run's models; with `data`, checked to be trained for its classes."""
    manifest = read_manifest(run_dir)
    if data is not None and int(manifest["num_classes"]) != data.num_classes:
        raise SatlabError(f"model_set.trained_from: the models were trained for {manifest['num_classes']} classes "
                          f"({manifest['dataset']}) but dataset '{data.name}' has {data.num_classes}; use the "
                          "dataset they were trained on")
    missing = [s.name for s in specs if s.name not in manifest["models"]]
    if missing:
        raise SatlabError(f"model_set.trained_from: {', '.join(missing)} not trained in {run_dir}; "
                          f"it has {', '.join(manifest['models'])}")
    return [TrainedSource(spec, manifest["models"][spec.name], manifest, seed) for spec in specs]
