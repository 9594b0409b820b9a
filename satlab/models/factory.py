"""Build a pixel-space model from a spec: the one place a timm network becomes a `PixelModel`.

`build_model(spec, num_classes, resolution, seed)` creates timm's architecture (random init seeded by the run's
seed and the model's name), loads its weights (timm's pretrained weights, or `spec.checkpoint_path` through the
one checkpoint reader `read_checkpoint`), and wraps it with the preprocessing timm resolves for it. Every
failure a user can cause becomes one SatlabError that says what to fix.

    >>> from satlab.models.factory import build_model
    >>> from satlab.models.specs import ModelSpec
    >>> model = build_model(ModelSpec("r", "test_resnet", input_size="dataset"), num_classes=10, resolution=32)
    >>> model(torch.rand(2, 3, 32, 32)).shape          # pixels in [0,1] -> logits
    torch.Size([2, 10])
"""

from __future__ import annotations

import difflib
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from torch import nn

from satlab.models.specs import ModelSpec
from satlab.models.wrapper import PixelModel
from satlab.schema import one_line
from satlab.utils import SatlabError


def check_arch(timm_name: str) -> str:
    """The architecture part of `timm_name` ('resnet50.a1_in1k' -> 'resnet50'); an unknown architecture or
    pretrained tag -> SatlabError naming close matches (timm's names, difflib)."""
    arch, _, tag = timm_name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `timm.list_models()` lists the known names"
        raise SatlabError(f"unknown model '{timm_name}' (not a timm architecture){hint}")
    if tag:
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        if tag not in tags:
            close = difflib.get_close_matches(tag, tags, n=3, cutoff=0.5)
            known = "it has no pretrained tags (drop the tag)"
            if tags:
                known = f"its tags: {', '.join(tags[:8])}{', ...' if len(tags) > 8 else ''}"
            hint = f"did you mean {', '.join(f'{arch}.{c}' for c in close)}? " if close else ""
            raise SatlabError(f"unknown pretrained tag '{tag}' in model '{timm_name}'; {hint}{known}")
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
    if classes == 0:  # timm's feature-extractor weights (e.g. *.orig_in21k): no classifier at all
        arch = spec.timm_name.partition(".")[0]
        headed = [n for n in timm.list_pretrained(f"{arch}.*")
                  if getattr(timm.models.get_pretrained_cfg(n), "num_classes", 0)]
        other = f"or a tag with a head ({', '.join(headed[:4])}{', ...' if len(headed) > 4 else ''})" if headed \
            else "(no tag of this architecture has one)"
        return SatlabError(
            f"model '{spec.name}' ({spec.timm_name}): these pretrained weights have no classifier head (a feature "
            f"extractor), so the model predicts no class; give it a head for the dataset's {num_classes} classes "
            "and train it (task=train train.mode=head, then model_set.trained_from=<that run>; model_args.num_classes "
            f"alone adds an untrained head), {other}"
        )
    return SatlabError(
        f"model '{spec.name}' ({spec.timm_name}) predicts {classes} classes but the dataset has {num_classes}; "
        "pick a dataset with the model's label space (e.g. dataset=imagenet for ImageNet weights) or a "
        "checkpoint trained on this dataset (checkpoint_path)"
    )


def init_seed(seed: int, name: str) -> int:
    """The torch seed of a model's random init: a function of the run's seed and the model's name only."""
    return zlib.crc32(f"{seed}:{name}".encode())


def create_timm(spec: ModelSpec, num_classes: int | None, seed: int) -> nn.Module:
    """`timm.create_model` for a spec (pretrained when the spec says so); random init seeded by `init_seed`."""
    check_arch(spec.timm_name)
    kwargs = dict(spec.model_args)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    torch.manual_seed(init_seed(seed, spec.name))
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


def module_bytes(model: nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def weight_bytes(spec: ModelSpec, num_classes: int | None) -> int | None:
    """Bytes of the weights (parameters + buffers) `build_model` would hold for `spec`, from timm's architecture
    built on the meta device (no memory, no download); None when it cannot be built there."""
    kwargs = dict(spec.model_args) | ({"num_classes": num_classes} if num_classes is not None else {})
    try:
        with torch.device("meta"):
            return module_bytes(timm.create_model(spec.timm_name, pretrained=False, **kwargs))
    except Exception:  # noqa: BLE001 - an architecture whose init needs real tensors: the caller measures it
        return None


def read_checkpoint(path: str | Path, name: str) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint file: .pth / .pt / .safetensors, plain or {'state_dict' | 'model': ...}
    (timm's reader, which also strips a DDP `module.` prefix); a missing or unreadable file -> SatlabError."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise SatlabError(f"model '{name}': checkpoint_path '{file}' does not exist")
    try:
        return timm.models.load_state_dict(str(file), use_ema=False)
    except Exception as err:  # noqa: BLE001 - safetensors/pickle/zip errors are not one type
        raise SatlabError(
            f"model '{name}': checkpoint '{file}' could not be read ({type(err).__name__}: {str(err).strip()[:200]})"
        ) from None


def head_classes(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The class count of the classifier in `state`, for timm `model`'s classifier name; None if unknown."""
    head = getattr(model, "pretrained_cfg", {}).get("classifier")
    head = head[0] if isinstance(head, (list, tuple)) else head
    weight = state.get(f"{head}.weight") if head else None
    return int(weight.shape[0]) if weight is not None else None


def _listed(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def state_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, other shape): the tensor names where checkpoint `state` does not fit `model`; the
    third as 'name checkpoint-shape vs model-shape'."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, shapes


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], spec: ModelSpec) -> None:
    """`model.load_state_dict(state, strict=True)`, a mismatch as one SatlabError: a head of another class count
    says so; anything else (another architecture, other model_args) names the mismatching tensors."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        where = f"model '{spec.name}': checkpoint '{spec.checkpoint_path}'"
        missing, unexpected, shapes = state_mismatch(model, state)
        head = getattr(model, "pretrained_cfg", {}).get("classifier")
        head = head[0] if isinstance(head, (list, tuple)) else head
        classes, theirs = getattr(model, "num_classes", None), head_classes(model, state)
        if not missing and not unexpected and shapes and head and all(s.startswith(f"{head}.") for s in shapes):
            raise SatlabError(
                f"{where} has a head for {theirs} classes but the model is built for {classes} classes "
                f"({_listed(shapes)}); "
                "the checkpoint was trained on another dataset"
            ) from None
        if not (missing or unexpected or shapes):  # not a key or shape problem: torch's own reason
            raise SatlabError(f"{where} cannot be loaded ({one_line(str(err))[:300]})") from None
        parts = [f"{len(missing)} of the model's {len(model.state_dict())} tensors missing ({_listed(missing)})"
                 if missing else "", f"{len(unexpected)} unexpected ({_listed(unexpected)})" if unexpected else "",
                 f"{len(shapes)} of another shape ({_listed(shapes, 2)})" if shapes else ""]
        args = f" with model_args {dict(spec.model_args)}" if spec.model_args else ""
        raise SatlabError(
            f"{where} does not fit {spec.timm_name}{args}: {'; '.join(p for p in parts if p)}; it was saved from "
            f"another architecture or other model_args: point checkpoint_path at a checkpoint of {spec.timm_name}, "
            "or set the model's timm_name to the architecture it was saved from"
        ) from None


def data_overrides(spec: ModelSpec, resolution: int) -> dict[str, Any]:
    """Overrides of timm's data config from the spec's `input_size` (None keeps timm's)."""
    if spec.input_size is None:
        return {}
    size = resolution if spec.input_size == "dataset" else int(spec.input_size)
    return {"input_size": (3, size, size)}


def wrap(net: nn.Module, spec: ModelSpec, resolution: int) -> PixelModel:
    """`net` taking [0,1] pixels, with the preprocessing timm resolves for it and the spec's input size."""
    return PixelModel.from_timm(net, data_overrides(spec, resolution))


def _fails(forward: Any, size: tuple[int, int]) -> str | None:
    """None if `forward` takes a blank [1,3,H,W] image of `size`, else its error in one line."""
    try:
        with torch.no_grad():
            forward(torch.zeros(1, 3, *size))
    except Exception as err:  # noqa: BLE001 - shape errors come as AssertionError, RuntimeError, ValueError
        return (str(err).strip().splitlines() or [type(err).__name__])[0][:200].rstrip(".")
    return None


def check_input_size(model: PixelModel, name: str, resolution: int,
                     model_args: Mapping[str, Any] | None = None) -> None:
    """One forward pass of a blank image at the dataset's resolution: a shape the model refuses (a patch size
    that does not divide the resolution, a fixed position embedding) becomes one SatlabError up front. When the
    network fails at its own input size too, the resolution is not the cause: the error names the model's
    arguments (`model_args`, e.g. drop_rate=5) instead."""
    was_training = model.training
    try:
        detail = _fails(model.eval(), (resolution, resolution))
        if detail is None:
            return
        native = tuple(getattr(model.model, "pretrained_cfg", {}).get("input_size", ()))[-2:]
        own = _fails(model.model, native) if len(native) == 2 else None  # the network at timm's own input size
        if own is not None:
            args = ", ".join(f"{k}={v}" for k, v in (model_args or {}).items())
            raise SatlabError(
                f"model '{name}' fails on a blank image at timm's own input size {native[0]} x {native[1]} too "
                f"({own}), so the cause is how it is built, not the dataset's resolution; check its model_args "
                f"({args or 'none'})")
        raise SatlabError(
            f"model '{name}' cannot take the dataset's {resolution} x {resolution} images ({detail}); choose a "
            "dataset.resolution it accepts (for a patch model, a multiple of its patch size) or give the model "
            "its own input_size in the model set"
        )
    finally:
        model.train(was_training)


def build_model(spec: ModelSpec, num_classes: int | None, resolution: int, seed: int = 0) -> PixelModel:
    """A timm model for `spec`, wrapped to take [0,1] pixels, checked on the resolution, in eval mode.

    Args:
        spec: the model (timm name, arguments, pretrained or `checkpoint_path`, input size).
        num_classes: the dataset's class count; pretrained weights keep their own head and must match it.
            None keeps the weights' own head (a checkpoint's class count, timm's pretrained or default head).
        resolution: the side of the dataset's square images (`input_size: dataset` takes it).
        seed: the run's seed; random init is seeded by (seed, spec.name), so it does not depend on call order.
    """
    if spec.checkpoint_path:
        state = read_checkpoint(spec.checkpoint_path, spec.name)
        model = create_timm(replace(spec, pretrained=False), num_classes, seed)
        classes = head_classes(model, state) if num_classes is None else None
        if classes is not None and classes != getattr(model, "num_classes", classes):
            model = create_timm(replace(spec, pretrained=False), classes, seed)
        load_weights(model, state, spec)
    else:
        model = create_timm(spec, None if spec.pretrained else num_classes, seed)
    if num_classes is not None and getattr(model, "num_classes", num_classes) != num_classes:
        raise _class_mismatch(spec, model.num_classes, num_classes)
    wrapped = wrap(model, spec, resolution).eval()
    check_input_size(wrapped, spec.name, resolution, spec.model_args)
    return wrapped
