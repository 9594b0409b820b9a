"""Fine-tuning: a source network (pretrained, checkpoint, a zoo model or random init) with a new head, and the
manifest of a trained model set that `task=sat` reads back (`model_set.trained_from=<task=train run dir>`).
"""

from __future__ import annotations

import copy
import json
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file
from torch import nn

from satlab.data import DatasetSplits
from satlab.models.factory import build_model, create_timm, data_overrides
from satlab.models.specs import ModelSpec
from satlab.models.wrapper import PixelModel
from satlab.utils import SatlabError

MANIFEST = "trained_models.json"


def read_state(path: str, name: str) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict (.safetensors or torch file, plain or {'state_dict': ...})."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise SatlabError(f"model '{name}': checkpoint_path '{file}' does not exist")
    try:
        state = load_file(str(file)) if file.suffix == ".safetensors" else torch.load(file, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - safetensors/pickle/zip errors
        raise SatlabError(f"model '{name}': checkpoint '{file}' could not be read ({type(err).__name__})") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def source_network(spec: ModelSpec, seed: int) -> nn.Module:
    """The timm model with its source weights and head: pretrained, from `checkpoint_path`, or random init."""
    if spec.checkpoint_path:
        state = read_state(spec.checkpoint_path, spec.name)
        probe = create_timm(replace(spec, pretrained=False), None, seed)
        head = probe.pretrained_cfg.get("classifier")
        head = head[0] if isinstance(head, (list, tuple)) else head
        weight = state.get(f"{head}.weight") if head else None
        classes = int(weight.shape[0]) if weight is not None else None
        model = create_timm(replace(spec, pretrained=False), classes, seed)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise SatlabError(f"model '{spec.name}': checkpoint '{spec.checkpoint_path}' does not fit "
                              f"{spec.timm_name} ({str(err).splitlines()[0][:160]})") from None
        return model
    return create_timm(spec, None, seed)


def with_new_head(source: nn.Module, spec: ModelSpec, num_classes: int, resolution: int, seed: int,
                  input_size: Any) -> PixelModel:
    """A copy of `source` whose classifier is re-initialised for `num_classes` (seeded by seed and name)."""
    model = copy.deepcopy(source)
    if not hasattr(model, "reset_classifier"):
        raise SatlabError(f"model '{spec.name}' has no known classifier head (timm's reset_classifier), so it "
                          "cannot get a head for the new dataset")
    torch.manual_seed(zlib.crc32(f"{seed}:{spec.name}:head".encode()))
    model.reset_classifier(num_classes)
    return PixelModel.from_timm(model, data_overrides(replace(spec, input_size=input_size), resolution)).train()


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
    return json.loads(path.read_text())


def load_trained(specs: Sequence[ModelSpec], run_dir: str | Path, data: DatasetSplits, seed: int) -> list[Any]:
    """The models of a task=train run, for the dataset they were trained on; checked against their fingerprints."""
    from satlab.models.loading import LoadedModel

    manifest = read_manifest(run_dir)
    if int(manifest["num_classes"]) != data.num_classes:
        raise SatlabError(f"model_set.trained_from: the models were trained for {manifest['num_classes']} classes "
                          f"({manifest['dataset']}) but dataset '{data.name}' has {data.num_classes}; use the "
                          "dataset they were trained on")
    missing = [s.name for s in specs if s.name not in manifest["models"]]
    if missing:
        raise SatlabError(f"model_set.trained_from: {', '.join(missing)} not trained in {run_dir}; "
                          f"it has {', '.join(manifest['models'])}")
    loaded = []
    for spec in specs:
        entry = manifest["models"][spec.name]
        weights = Path(entry["weights"])
        if not weights.is_file():
            raise SatlabError(f"model '{spec.name}': trained weights {weights} are gone (cache cleared?); rerun task=train")
        built = replace(spec, checkpoint_path=str(weights), pretrained=False, train_seed=None,
                        input_size=entry["input_size"])
        model = build_model(built, data.num_classes, data.resolution, seed)
        if model.fingerprint() != entry["fingerprint"]:
            raise SatlabError(f"model '{spec.name}': weights at {weights} do not match the manifest's fingerprint")
        loaded.append(LoadedModel(spec, model, model.fingerprint(), {k: entry[k] for k in entry if k != "recipe"}))
    return loaded
