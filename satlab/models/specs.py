"""Model specs: what a model set says about each model (timm name, weights, family, architecture components).

A model set config lists the models to run under `models` (plain names, so `model_set.models=[a,b]` works on
the command line) and/or selects timm names with `filter` / `exclude` (fnmatch patterns over
`timm.list_models`), and describes known models under `catalog`. A name missing from the catalog is refused
unless the model set's `uncatalogued` says how to build it: `random` (timm's architecture, random init),
`pretrained` (timm's pretrained weights) or `timm` (a timm name, pretrained when `model_set.pretrained` is true:
`model_set=timm`). An untrained model in a map of trained ones would give a wrong map, not an error.

A model's family is its catalog `family`, else its `base_architecture` component, else `timm_family`: the
paper's base-architecture family read from timm's architecture name by a short prefix table (TIMM_FAMILIES),
or the architecture name itself when the table does not know it (never a guess).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from satlab.schema import shown as show
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

UNCATALOGUED = ("refuse", "random", "pretrained", "timm")  # what `model_set.uncatalogued` may say

# timm architecture name (fnmatch pattern) -> the paper's base-architecture family; the first match wins, so the
# hybrids (a ResNet/conv stem or conv stages under attention) come before the plain ViT/EfficientNet rows they
# share a prefix with. The rows follow the labels of the paper's component table (docs/paper69.md), e.g. RegNet,
# ReXNet and NF-RegNet are NAS (CNN) and BoTNet/HaloNet (attention inside a ResNet) are CNN there. Names the
# table does not know (e.g. PiT, which the paper labels both Transformer and Hybrid) keep their architecture name
# as the family: a wrong family would put a pair in the wrong group of the same-family AUC without a trace.
TIMM_FAMILIES: tuple[tuple[str, str], ...] = (
    *((p, "Hybrid") for p in ("vit_*_r26_*", "vit_*_r50_*", "vit_*_r_*", "vit_*_resnet*", "vit_*_mci_*", "coat_*",
                              "coatnet*", "coatnext*", "twins_*", "visformer*", "xcit_*", "levit*", "maxvit*",
                              "maxxvit*", "mobilevit*", "efficientformer*", "edgenext*", "fastvit*", "test_coatnet*",
                              "test_maxvit*")),
    ("swin_s3_*", "NAS (TFM)"),
    *((p, "NAS (CNN)") for p in ("efficientnet*", "tf_efficientnet*", "gc_efficientnet*", "mobilenetv3*",
                                 "tf_mobilenetv3*", "mobilenetv4*", "mnasnet*", "semnasnet*", "spnasnet*", "fbnet*",
                                 "mixnet*", "tf_mixnet*", "hardcorenas*", "tinynet*", "nasnet*", "pnasnet*",
                                 "regnet*", "haloregnetz*", "nf_regnet*", "rexnet*", "test_efficientnet*")),
    *((p, "MLP-Mixer") for p in ("mixer_*", "gmixer_*", "resmlp_*", "gmlp_*")),
    *((p, "Transformer") for p in ("vit_*", "deit*", "swin*", "cait_*", "beit*", "eva*", "tnt_*", "nest_*",
                                   "crossvit_*", "convit_*", "flexivit*", "test_vit*")),
    *((p, "CNN") for p in ("resnet*", "resnext*", "wide_resnet*", "seresnet*", "seresnext*", "ecaresnet*",
                           "legacy_se*", "senet*", "resnest*", "res2net*", "res2next*", "skresnet*", "skresnext*",
                           "gcresnet*", "gcresnext*", "bat_resnext*", "tresnet*", "convnext*", "convmixer*",
                           "densenet*", "vgg*", "repvgg*", "inception*", "xception*", "gluon_xception*", "dla*",
                           "dpn*", "hrnet*", "cspresnet*", "cspresnext*", "cspdarknet*", "darknet*", "cs3*",
                           "selecsls*", "vovnet*", "ese_vovnet*", "nfnet*", "dm_nfnet*", "eca_nfnet*",
                           "nf_resnet*", "nf_seresnet*", "nf_ecaresnet*", "poolformer*", "halonet*", "sehalonet*",
                           "halo2botnet*", "lamhalobotnet*", "botnet*", "sebotnet*", "eca_botnext*",
                           "eca_halonext*", "eca_resnet*", "eca_resnext*", "lambda_resnet*", "ghostnet*",
                           "mobilenetv1*", "mobilenetv2*", "test_resnet*", "test_convnext*", "test_nfnet*")),
)


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


def timm_family(timm_name: str) -> str:
    """The paper's base-architecture family of a timm model from its architecture name (TIMM_FAMILIES), e.g.
    'convnext_tiny.fb_in1k' -> 'CNN'; an architecture the table does not know -> its own name ('pit_b_224')."""
    arch = str(timm_name).split(".", 1)[0]
    return next((family for pattern, family in TIMM_FAMILIES if fnmatch.fnmatchcase(arch, pattern)), arch)


def _patterns(model_set: Mapping[str, Any], key: str) -> list[str]:
    """`model_set.<key>` (filter or exclude) as a list of fnmatch patterns; null -> []."""
    value = model_set.get(key)
    if value in (None, "", []):
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) and v for v in values):
        raise SatlabError(f"model_set.{key}={value!r} must be an fnmatch pattern ('convnext*') or a list of them")
    return list(values)


def _close_patterns(pattern: str, names: list[str]) -> list[str]:
    """Patterns like `pattern` that match some of `names`: its literal stem replaced by close name prefixes."""
    stem = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    if stem == pattern:
        return difflib.get_close_matches(pattern, names, n=4, cutoff=0.6)
    prefixes = {n[:k] for n in names for k in (len(stem) - 1, len(stem), len(stem) + 1) if k > 0}
    return [p + pattern[len(stem):] for p in difflib.get_close_matches(stem, prefixes, n=1, cutoff=0.6)]


def filtered_names(model_set: Mapping[str, Any]) -> list[str]:
    """The timm names `model_set.filter` selects, less `model_set.exclude`: `timm.list_models(filter,
    pretrained=model_set.pretrained, exclude_filters=exclude)` (with pretrained weights, one name per pretrained
    tag, e.g. 'convnext_tiny.fb_in1k'). Empty when there is no filter.

    Raises SatlabError for patterns that are not strings, an `exclude` without a `filter`, and a filter that
    selects nothing (naming close patterns, and the architectures it matches without pretrained weights).
    """
    include, exclude = _patterns(model_set, "filter"), _patterns(model_set, "exclude")
    if exclude and not include:
        raise SatlabError("model_set.exclude removes names from model_set.filter's; set model_set.filter too, or "
                          "leave the unwanted names out of model_set.models")
    if not include:
        return []
    import timm

    pretrained = bool(model_set.get("pretrained", False))
    names = timm.list_models(include, pretrained=pretrained, exclude_filters=exclude)
    if names:
        return names
    shown = f"model_set.filter={show(include[0] if len(include) == 1 else include)}"
    if timm.list_models(include, pretrained=pretrained):
        dropped = show(exclude[0] if len(exclude) == 1 else exclude)
        raise SatlabError(f"{shown} selects no timm model once model_set.exclude={dropped} is applied")
    if pretrained and timm.list_models(include):
        found = timm.list_models(include)
        raise SatlabError(f"{shown} matches {len(found)} timm architecture(s) ({', '.join(found[:5])}"
                          f"{', ...' if len(found) > 5 else ''}) but none has pretrained weights; set "
                          "model_set.pretrained=false for random init")
    known = timm.list_models(pretrained=pretrained)
    close = list(dict.fromkeys(c for p in include for c in _close_patterns(p, known)))
    hint = f"did you mean {', '.join(close)}?" if close else "`timm.list_models()` lists the known names"
    raise SatlabError(f"{shown} matches no timm model{' with pretrained weights' if pretrained else ''}; {hint}")


def model_names(model_set: Mapping[str, Any]) -> list[str]:
    """The names of a model set config: `models`, or the timm names `filter` selects (one of the two)."""
    model_set = plain(model_set)
    names = model_set.get("models") or []
    if isinstance(names, str):
        names = [names]
    filtered = filtered_names(model_set)
    if filtered and names:
        raise SatlabError("model_set.models and model_set.filter are both given; use one (model_set.filter also "
                          "takes a list of patterns: model_set.filter='[resnet5*,vit_small*]')")
    return [str(n) for n in filtered or names]


def model_specs(model_set: Mapping[str, Any]) -> list[ModelSpec]:
    """Resolve the names of a model set config (`models` or `filter`) against its `catalog` into specs.

    Raises SatlabError for an empty or one-model set, duplicate names, or an unknown component key.
    """
    model_set = plain(model_set)
    names = model_names(model_set)
    if len(names) < 2:
        timm_names = uncatalogued_mode(model_set) == "timm"
        hint = " or select timm names with model_set.filter='pattern*'" if timm_names else ""
        raise SatlabError(
            f"model set '{model_set.get('name', '?')}' has {len(names)} model(s); SAT compares pairs, "
            f"so list at least 2 under model_set.models=[a,b,...]{hint}"
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
        mode = uncatalogued_mode(model_set)
        default_pretrained = mode == "pretrained" or (mode == "timm" and bool(default_pretrained))
    components = {k: str(v) for k, v in (entry.pop("components", None) or {}).items()}
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise SatlabError(f"model '{name}': unknown component(s) {sorted(unknown)}; known: {list(COMPONENTS)}")
    timm_name = str(entry.pop("timm_name", name))
    family = entry.pop("family", None) or components.get("base_architecture") or timm_family(timm_name)
    train_seed = entry.pop("train_seed", None)
    input_size = entry.pop("input_size", model_set.get("input_size"))
    if input_size is None and train_seed is not None:
        input_size = "dataset"  # a zoo model is trained at the dataset's resolution
    spec = ModelSpec(
        name=str(name),
        timm_name=timm_name,
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
