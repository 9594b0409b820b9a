"""Model specs: what a model set says about each model (timm name, weights, family, architecture components).

A model set config lists the models to run under `models` (plain names, so `model_set.models=[a,b]` works on
the command line) and describes known models under `catalog`. A name missing from the catalog is refused unless
the model set's `uncatalogued` says how to build it: `random` (timm's architecture, random init) or `pretrained`
(timm's pretrained weights). An untrained model in a map of trained ones would give a wrong map, not an error.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Mapping

from satlab.utils import SatlabError, plain

# The paper's 13 architecture components, in the column order of its released table.
COMPONENTS: tuple[str, ...] = (
    "base_architecture",
    "hierarchical_structure",
    "stem_layer",
    "input_resolution",
    "normalization",
    "activation",
    "pooling_stem",
    "pooling_final",
    "sa_2d",
    "cw_attention",
    "cw_attention_location",
    "dw_conv",
    "group_conv",
)

UNCATALOGUED = ("refuse", "random", "pretrained")  # what `model_set.uncatalogued` may say


@dataclass(frozen=True)
class ModelSpec:
    """One model of a model set. `name` is the id users see; `timm_name` is what timm builds."""

    name: str
    timm_name: str
    family: str = "unknown"
    pretrained: bool = False
    checkpoint_path: str | None = None
    model_args: Mapping[str, Any] = field(default_factory=dict)
    components: Mapping[str, str] = field(default_factory=dict)
    train_seed: int | None = None  # set for models of a zoo trained by satlab (input_size then defaults to "dataset")
    train: Mapping[str, Any] = field(default_factory=dict)  # per-model overrides of the zoo's training config
    input_size: int | str | None = None  # None: timm's data config; "dataset": the dataset's resolution; or N
    note: str = ""


def model_specs(model_set: Mapping[str, Any]) -> list[ModelSpec]:
    """Resolve the `models` list of a model set config against its `catalog` into specs.

    Raises SatlabError for an empty or one-model set, duplicate names, or an unknown component key.
    """
    model_set = plain(model_set)
    names = model_set.get("models") or []
    if isinstance(names, str):
        names = [names]
    if len(names) < 2:
        raise SatlabError(
            f"model set '{model_set.get('name', '?')}' has {len(names)} model(s); SAT compares pairs, "
            "so list at least 2 under model_set.models=[a,b,...]"
        )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SatlabError(f"model_set.models lists {', '.join(dupes)} more than once; list each model once")
    check_catalogued(model_set, names)
    return [resolve_spec(model_set, name) for name in names]


def uncatalogued_mode(model_set: Mapping[str, Any]) -> str:
    """`model_set.uncatalogued` (default refuse), checked."""
    mode = model_set.get("uncatalogued", "refuse")
    if mode not in UNCATALOGUED:
        raise SatlabError(f"model_set.uncatalogued must be one of {', '.join(UNCATALOGUED)}, got {mode!r}")
    return mode


def check_catalogued(model_set: Mapping[str, Any], names: list[str]) -> None:
    """Refuse names outside the catalog unless `model_set.uncatalogued` says random or pretrained."""
    catalog = model_set.get("catalog") or {}
    missing = [str(n) for n in names if n not in catalog]
    if not missing or uncatalogued_mode(model_set) != "refuse":
        return
    close = sorted({c for n in missing for c in difflib.get_close_matches(n, list(catalog), n=2, cutoff=0.8)})
    hint = f"did you mean {', '.join(close)}? " if close else ""
    known = ", ".join(list(catalog)[:12]) + (", ..." if len(catalog) > 12 else "")
    raise SatlabError(
        f"model(s) {', '.join(missing)} not in the catalog of model set '{model_set.get('name', '?')}' ({known or 'empty'}); "
        f"{hint}to use a timm architecture outside it, set model_set.uncatalogued=random (random init, untrained) "
        "or model_set.uncatalogued=pretrained (timm's pretrained weights)"
    )


def resolve_spec(model_set: Mapping[str, Any], name: str) -> ModelSpec:
    """The spec of one model name: its catalog entry with the model set's defaults, or a plain timm name."""
    model_set = plain(model_set)
    catalog = model_set.get("catalog") or {}
    entry = dict(catalog.get(name) or {})
    default_pretrained = model_set.get("pretrained", False)
    if name not in catalog:
        check_catalogued(model_set, [name])
        default_pretrained = uncatalogued_mode(model_set) == "pretrained"
    components = {k: str(v) for k, v in (entry.pop("components", None) or {}).items()}
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise SatlabError(f"model '{name}': unknown component(s) {sorted(unknown)}; known: {list(COMPONENTS)}")
    family = entry.pop("family", None) or components.get("base_architecture", "unknown")
    train_seed = entry.pop("train_seed", None)
    input_size = entry.pop("input_size", model_set.get("input_size"))
    if input_size is None and train_seed is not None:
        input_size = "dataset"  # a zoo model is trained at the dataset's resolution
    spec = ModelSpec(
        name=str(name),
        timm_name=str(entry.pop("timm_name", name)),
        family=str(family),
        pretrained=bool(entry.pop("pretrained", default_pretrained)),
        checkpoint_path=entry.pop("checkpoint_path", None),
        model_args=dict(entry.pop("model_args", None) or {}),
        components=components,
        train_seed=train_seed,
        train=dict(entry.pop("train", None) or {}),
        input_size=input_size,
        note=str(entry.pop("note", "")),
    )
    if entry:
        raise SatlabError(f"model '{name}': unknown catalog field(s) {sorted(entry)}")
    return spec
