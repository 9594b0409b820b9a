"""Build pixel-space models from specs: timm by name (pretrained or random init) or a local checkpoint.

Models of a zoo that satlab trains itself (specs with `train_seed`) are built by `satlab.models.zoo`, which
calls `create_timm` from here. Every failure a user can cause becomes one SatlabError that says what to fix.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
import zlib
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from satlab.models.specs import ModelSpec
from satlab.models.wrapper import PixelModel
from satlab.utils import SatlabError


def check_arch(timm_name: str) -> str:
    """The architecture part of `timm_name` ('resnet50.a1_in1k' -> 'resnet50'); unknown -> SatlabError."""
    arch = timm_name.split(".", 1)[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `timm.list_models()` lists the known names"
        raise SatlabError(f"unknown model '{timm_name}' (not a timm architecture){hint}")
    return arch


def check_classes(spec: ModelSpec, num_classes: int) -> None:
    """For pretrained weights, compare their class count (timm's pretrained cfg) with the dataset's up front."""
    if not spec.pretrained or spec.checkpoint_path:
        return
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    classes = getattr(cfg, "num_classes", None) if cfg is not None else None
    if classes is not None and "num_classes" not in spec.model_args and classes != num_classes:
        raise _class_mismatch(spec, classes, num_classes)


def _class_mismatch(spec: ModelSpec, classes: int, num_classes: int) -> SatlabError:
    return SatlabError(
        f"model '{spec.name}' ({spec.timm_name}) predicts {classes} classes but the dataset has {num_classes}; "
        "pick a dataset with the model's label space (e.g. dataset=imagenet for ImageNet weights) or a "
        "checkpoint trained on this dataset (checkpoint_path)"
    )


def create_timm(spec: ModelSpec, num_classes: int | None, seed: int, **extra: Any) -> nn.Module:
    """`timm.create_model` for a spec. Random init is seeded by (seed, model name) so it is reproducible."""
    check_arch(spec.timm_name)
    kwargs = {**dict(spec.model_args), **extra}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    torch.manual_seed(zlib.crc32(f"{seed}:{spec.name}".encode()))
    try:
        return timm.create_model(spec.timm_name, pretrained=spec.pretrained, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise SatlabError(f"model '{spec.name}': timm cannot build '{spec.timm_name}' with {kwargs} ({err})") from None
    except Exception as err:  # noqa: BLE001 - hub/network errors come in many types
        if not spec.pretrained:
            raise
        raise SatlabError(
            f"model '{spec.name}': pretrained weights for '{spec.timm_name}' could not be loaded "
            f"({type(err).__name__}); offline, put them in the Hugging Face cache (HF_HOME) on a machine with "
            "internet first, or set checkpoint_path for this model in the model set"
        ) from None


def load_checkpoint(model: nn.Module, path: str, name: str) -> None:
    """Load a local checkpoint (.pth/.pt/.safetensors, plain or {'state_dict': ...}) into `model`."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise SatlabError(f"model '{name}': checkpoint_path '{file}' does not exist")
    try:
        timm.models.load_checkpoint(model, str(file), strict=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "size mismatch" in ln), lines[0] if lines else "")
        classes = getattr(model, "num_classes", "?")
        raise SatlabError(
            f"model '{name}': checkpoint '{file}' does not fit the model built for the dataset's {classes} classes "
            f"({detail[:200]}); a class-count mismatch means the checkpoint was trained on another dataset"
        ) from None
    except Exception as err:  # noqa: BLE001 - an unreadable file: safetensors/pickle/zip errors are not RuntimeError
        raise SatlabError(
            f"model '{name}': checkpoint '{file}' could not be read ({type(err).__name__}: {str(err).strip()[:200]})"
        ) from None


def data_overrides(spec: ModelSpec, resolution: int) -> dict[str, Any]:
    """Overrides of timm's data config from the spec's `input_size` (None keeps timm's)."""
    if spec.input_size is None:
        return {}
    size = resolution if spec.input_size == "dataset" else int(spec.input_size)
    return {"input_size": (3, size, size)}


def check_input_size(model: PixelModel, name: str, resolution: int) -> None:
    """One forward pass of a blank image at the dataset's resolution: a shape the model refuses (a patch size
    that does not divide the resolution, a fixed position embedding) becomes one SatlabError up front."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, resolution, resolution))
    except Exception as err:  # noqa: BLE001 - shape errors come as AssertionError, RuntimeError, ValueError
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200].rstrip(".")
        raise SatlabError(
            f"model '{name}' cannot take the dataset's {resolution} x {resolution} images ({detail}); choose a "
            "dataset.resolution it accepts (for a patch model, a multiple of its patch size) or give the model "
            "its own input_size in the model set"
        ) from None
    finally:
        model.train(was_training)


def build_model(spec: ModelSpec, num_classes: int, resolution: int, seed: int = 0) -> PixelModel:
    """A pretrained / checkpoint / randomly initialised timm model, wrapped to take [0,1] pixels, in eval mode.

    Pretrained models keep their own head; a class count different from the dataset's is an error.
    """
    if spec.checkpoint_path:
        model = create_timm(replace(spec, pretrained=False), num_classes, seed)
        load_checkpoint(model, spec.checkpoint_path, spec.name)
    else:
        model = create_timm(spec, None if spec.pretrained else num_classes, seed)
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise _class_mismatch(spec, model.num_classes, num_classes)
    wrapped = PixelModel.from_timm(model, data_overrides(spec, resolution)).eval()
    check_input_size(wrapped, spec.name, resolution)
    return wrapped
