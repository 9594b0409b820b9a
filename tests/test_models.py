"""The pixel-space wrapper (normalisation, resize only when sizes differ) and the model factory and specs."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file
from timm.data import resolve_model_data_config

from satlab.models.factory import build_model, check_arch, data_overrides, read_checkpoint
from satlab.models.hub import pretrained_source
from satlab.models.specs import COMPONENTS, ModelSpec, filtered_names, model_specs, timm_family
from satlab.models.wrapper import PixelModel
from satlab.utils import SatlabError


pytestmark = pytest.mark.usefixtures("one_thread")


def make(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return timm.create_model(name, **kwargs).eval()


def pixels(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# --- wrapper ---------------------------------------------------------------------------------------------------

# test_resnet: mean = std = 0.5, bilinear; test_efficientnet: ImageNet mean/std, bicubic (per timm's configs)
MODELS = {"test_resnet": "bilinear", "test_efficientnet": "bicubic"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_wrapper_takes_timm_preprocessing(name):
    inner = make(name, num_classes=4)
    cfg = resolve_model_data_config(inner)
    assert cfg["interpolation"] == MODELS[name]
    wrapped = PixelModel.from_timm(inner)
    assert wrapped.interpolation == MODELS[name]
    assert wrapped.input_size == tuple(cfg["input_size"][-2:]) == (160, 160)
    assert torch.equal(wrapped.mean.flatten(), torch.tensor(cfg["mean"]))
    assert torch.equal(wrapped.std.flatten(), torch.tensor(cfg["std"]))
    # overrides win (the dataset resolution), the rest is still timm's
    small = PixelModel.from_timm(inner, {"input_size": (3, 32, 32)})
    assert small.input_size == (32, 32) and small.interpolation == MODELS[name]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_wrapper_normalises_without_resizing_at_the_model_size(name, monkeypatch):
    inner = make(name, num_classes=4)
    cfg = resolve_model_data_config(inner)
    wrapped = PixelModel.from_timm(inner, {"input_size": (3, 32, 32)}).eval()
    x = pixels(2, 3, 32, 32)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    if name == "test_efficientnet":
        assert not torch.allclose(mean, torch.full_like(mean, 0.5))  # a non-trivial mean/std is covered

    def no_resize(*args, **kwargs):
        raise AssertionError("interpolate called although the input is at the model's size")

    monkeypatch.setattr(F, "interpolate", no_resize)
    expected = (x - mean) / std
    assert torch.allclose(wrapped.preprocess(x), expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        out = wrapped(x)
        ref = inner(expected)
    assert out.shape == (2, 4)
    assert torch.allclose(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("side", [48, 20])
def test_wrapper_resizes_only_when_sizes_differ(name, side):
    """Other sizes: interpolate with timm's mode; antialias when shrinking (as the wrapper does)."""
    inner = make(name, num_classes=4)
    cfg = resolve_model_data_config(inner)
    wrapped = PixelModel.from_timm(inner, {"input_size": (3, 32, 32)}).eval()
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    x = pixels(2, 3, side, side, seed=side)
    shrink = side > 32
    resized = F.interpolate(x, size=(32, 32), mode=MODELS[name], align_corners=False, antialias=shrink)
    assert torch.allclose(wrapped.preprocess(x), (resized - mean) / std, rtol=0, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), inner((resized - mean) / std), rtol=0, atol=1e-5)
    # the mode and the antialias flag matter: a different choice gives a different tensor
    other_mode = "bicubic" if MODELS[name] == "bilinear" else "bilinear"
    other = F.interpolate(x, size=(32, 32), mode=other_mode, align_corners=False, antialias=shrink)
    assert (wrapped.preprocess(x) - (other - mean) / std).abs().max() > 1e-3
    if shrink:
        plain = F.interpolate(x, size=(32, 32), mode=MODELS[name], align_corners=False)
        assert (wrapped.preprocess(x) - (plain - mean) / std).abs().max() > 1e-3


def test_wrapper_unknown_interpolation_falls_back_to_bilinear():
    wrapped = PixelModel.from_timm(make("test_resnet", num_classes=4), {"interpolation": "random"})
    assert wrapped.interpolation == "bilinear"
    assert PixelModel(torch.nn.Identity(), (0.0,) * 3, (1.0,) * 3, (8, 8), "nearest").interpolation == "nearest"


# --- check_arch ----------------------------------------------------------------------------------------------


def test_check_arch():
    assert check_arch("resnet50.a1_in1k") == "resnet50"
    assert check_arch("test_resnet") == "test_resnet"
    with pytest.raises(SatlabError, match=r"unknown model 'resnet5'.*did you mean resnet50"):
        check_arch("resnet5")
    with pytest.raises(SatlabError, match=r"unknown model 'zzqqxx_net'.*timm\.list_models"):
        check_arch("zzqqxx_net")


def test_build_model_unknown_arch_is_satlab_error():
    with pytest.raises(SatlabError, match=r"did you mean test_resnet"):
        build_model(ModelSpec("tiny", "test_resnt"), 5, 32)


def test_build_model_bad_model_args_is_satlab_error():
    with pytest.raises(SatlabError, match=r"model 'tiny': timm cannot build 'test_resnet'"):
        build_model(ModelSpec("tiny", "test_resnet", model_args={"no_such_arg": 1}), 5, 32)


# --- build_model --------------------------------------------------------------------------------------------


def test_build_model_random_init_is_seeded_and_sized(tmp_path):
    spec = ModelSpec("tiny", "test_resnet", input_size="dataset")
    a = build_model(spec, 5, 32, seed=1)
    b = build_model(spec, 5, 32, seed=1)
    c = build_model(spec, 5, 32, seed=2)
    assert isinstance(a, PixelModel) and not a.training and a.input_size == (32, 32)
    x = pixels(2, 3, 32, 32)
    with torch.no_grad():
        assert a(x).shape == (2, 5)
        assert torch.equal(a(x), b(x))
        assert not torch.equal(a(x), c(x))
    assert build_model(ModelSpec("tiny", "test_resnet"), 5, 32).input_size == (160, 160)  # timm's own size
    assert build_model(ModelSpec("tiny", "test_resnet", input_size=48), 5, 32).input_size == (48, 48)


def test_data_overrides():
    assert data_overrides(ModelSpec("a", "test_resnet"), 32) == {}
    assert data_overrides(ModelSpec("a", "test_resnet", input_size="dataset"), 32) == {"input_size": (3, 32, 32)}
    assert data_overrides(ModelSpec("a", "test_resnet", input_size=64), 32) == {"input_size": (3, 64, 64)}


def test_pretrained_offline_without_cache_fails_fast(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE is read when huggingface_hub is imported, so patch the constant as well as the env."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    start = time.perf_counter()
    with pytest.raises(SatlabError, match=r"model 'tiny': pretrained weights for 'test_resnet' could not be loaded"):
        build_model(ModelSpec("tiny", "test_resnet", pretrained=True), 1000, 32)
    assert time.perf_counter() - start < 10  # no network retries (online it retries for ~45 s here)


def test_pretrained_head_class_mismatch(tmp_path):
    """'Pretrained' weights from a local file (timm's pretrained_cfg_overlay) keep their own head."""
    file = tmp_path / "weights_1000.pth"
    torch.save(make("test_resnet", seed=5).state_dict(), file)  # timm's default 1000 classes
    spec = ModelSpec("pre", "test_resnet", pretrained=True, model_args={"pretrained_cfg_overlay": {"file": str(file)}})
    with pytest.raises(SatlabError, match=r"model 'pre' \(test_resnet\) predicts 1000 classes but the dataset has 5"):
        build_model(spec, 5, 32)
    assert build_model(spec, 1000, 32).model.num_classes == 1000  # the same spec fits a 1000-class dataset

    file7 = tmp_path / "weights_7.pth"
    torch.save(make("test_resnet", seed=5, num_classes=7).state_dict(), file7)
    spec7 = ModelSpec(
        "pre7", "test_resnet", pretrained=True,
        model_args={"num_classes": 7, "pretrained_cfg_overlay": {"file": str(file7)}},
    )
    with pytest.raises(SatlabError, match=r"model 'pre7' \(test_resnet\) predicts 7 classes but the dataset has 5"):
        build_model(spec7, 5, 32)


# --- checkpoints ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pth", "pth_wrapped", "safetensors"])
def test_checkpoint_round_trip(tmp_path, kind):
    original = make("test_resnet", seed=3, num_classes=5)
    state = original.state_dict()
    if kind == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "model.pth"
        torch.save({"state_dict": state} if kind == "pth_wrapped" else state, path)
    spec = ModelSpec("mine", "test_resnet", checkpoint_path=str(path), input_size="dataset")
    built = build_model(spec, 5, 32, seed=123)
    assert not built.training
    x = pixels(3, 3, 32, 32)
    with torch.no_grad():
        expected = PixelModel.from_timm(original, {"input_size": (3, 32, 32)}).eval()(x)
        assert torch.equal(built(x), expected)
    # the init seed does not matter once the checkpoint is loaded
    with torch.no_grad():
        assert torch.equal(build_model(spec, 5, 32, seed=7)(x), expected)


def test_wrong_checkpoints_raise(tmp_path):
    vit = tmp_path / "vit.pth"
    torch.save(make("test_vit", num_classes=5).state_dict(), vit)
    with pytest.raises(SatlabError, match=r"model 'mine': checkpoint '.*vit\.pth' does not fit test_resnet: .* tensors "
                                          r"missing .* unexpected \(cls_token, pos_embed"):
        build_model(ModelSpec("mine", "test_resnet", checkpoint_path=str(vit)), 5, 32)

    ten = tmp_path / "ten.pth"  # right architecture, trained on 10 classes; the dataset has 5
    torch.save(make("test_resnet", num_classes=10).state_dict(), ten)
    with pytest.raises(SatlabError, match=r"model 'mine': checkpoint '.*ten\.pth' has a head for 10 classes but the "
                                          r"model is built for 5 classes \(fc\.weight \(10, 96\) vs \(5, 96\)"):
        build_model(ModelSpec("mine", "test_resnet", checkpoint_path=str(ten)), 5, 32)

    with pytest.raises(SatlabError, match=r"model 'mine': checkpoint_path '.*missing\.pth' does not exist"):
        build_model(ModelSpec("mine", "test_resnet", checkpoint_path=str(tmp_path / "missing.pth")), 5, 32)

    for junk in ("junk.pth", "junk.safetensors"):
        (tmp_path / junk).write_bytes(b"not a checkpoint at all")
        with pytest.raises(SatlabError, match=rf"model 'mine': checkpoint '.*{junk}'"):
            read_checkpoint(tmp_path / junk, "mine")


# --- weights fingerprint -----------------------------------------------------------------------------------


def test_fingerprint_follows_weights_and_preprocessing(tmp_path):
    spec = ModelSpec("a", "test_resnet", model_args={"drop_rate": 0.1})
    one, same = build_model(spec, 10, 32, seed=0), build_model(spec, 10, 32, seed=0)
    assert one.fingerprint() == same.fingerprint()
    assert one.fingerprint() != build_model(spec, 10, 32, seed=1).fingerprint()  # other init
    assert one.fingerprint() != build_model(replace(spec, name="b"), 10, 32, seed=0).fingerprint()  # name seeds init
    with torch.no_grad():
        next(same.parameters()).add_(1e-3)
    assert one.fingerprint() != same.fingerprint()  # any weight change
    other_size = build_model(replace(spec, input_size=48), 10, 32, seed=0)
    assert one.fingerprint() != other_size.fingerprint()  # same weights, other preprocessing
    # a checkpoint is keyed by the weights it holds, not by its path
    path_a, path_b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({k: v.contiguous() for k, v in one.model.state_dict().items()}, str(path_a))
    save_file({k: v.contiguous() for k, v in one.model.state_dict().items()}, str(path_b))
    from_a = build_model(replace(spec, checkpoint_path=str(path_a)), 10, 32, seed=3)
    from_b = build_model(replace(spec, checkpoint_path=str(path_b)), 10, 32, seed=7)
    assert from_a.fingerprint() == from_b.fingerprint() == one.fingerprint()


# --- model_specs ----------------------------------------------------------------------------------------------


def test_model_specs_resolves_catalog():
    specs = model_specs(
        {
            "name": "tiny",
            "models": ["r", "test_vit"],
            "uncatalogued": "random",
            "input_size": "dataset",
            "catalog": {
                "r": {
                    "timm_name": "test_resnet",
                    "model_args": {"drop_rate": 0.1},
                    "components": {"base_architecture": "resnet", "normalization": "bn"},
                    "input_size": 64,
                }
            },
        }
    )
    assert [s.name for s in specs] == ["r", "test_vit"]
    r, vit = specs
    assert r.timm_name == "test_resnet" and r.family == "resnet" and r.model_args == {"drop_rate": 0.1}
    assert r.components == {"base_architecture": "resnet", "normalization": "bn"} and r.input_size == 64
    assert vit.timm_name == "test_vit" and vit.family == "Transformer" and vit.input_size == "dataset"
    assert not r.pretrained and r.checkpoint_path is None


@pytest.mark.parametrize(
    ("model_set", "match"),
    [
        ({"name": "one", "models": ["a"]}, r"model set 'one' has 1 model\(s\).*at least 2"),
        ({"name": "solo", "models": "a"}, r"has 1 model\(s\)"),
        ({"name": "empty", "models": []}, r"model set 'empty' has 0 model\(s\)"),
        ({"name": "none"}, r"has 0 model\(s\)"),
        ({"models": ["a", "b", "a", "c", "b"]}, r"lists a, b more than once"),
        (
            {"models": ["a", "b"], "uncatalogued": "random", "catalog": {"a": {"components": {"colour": "red"}}}},
            r"model 'a': unknown component\(s\) \['colour'\]; known: .*base_architecture",
        ),
        ({"models": ["a", "b"], "uncatalogued": "random", "catalog": {"b": {"weights": "x"}}},
         r"model 'b': unknown catalog field\(s\) \['weights'\]"),
        ({"name": "z", "models": ["a", "b"], "catalog": {"a": {}}}, r"model\(s\) b not in the catalog of model set 'z'"),
        ({"models": ["a", "b"], "uncatalogued": "maybe"}, r"model_set.uncatalogued must be one of refuse, random"),
    ],
)
def test_model_specs_errors(model_set, match):
    with pytest.raises(SatlabError, match=match):
        model_specs(model_set)


def test_model_specs_accepts_every_component():
    specs = model_specs({"models": ["a", "b"], "uncatalogued": "random",
                         "catalog": {"a": {"components": {c: "x" for c in COMPONENTS}}}})
    assert set(specs[0].components) == set(COMPONENTS) and len(COMPONENTS) == 13


# --- model_set=timm: families from architecture names, filters, tags --------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def test_timm_family_never_contradicts_the_paper():
    """The prefix table agrees with the paper's base architecture on every paper69 model it names (most of them);
    the others (PiT, which the paper labels both ways) keep their architecture name."""
    catalog = yaml.safe_load((ROOT / "conf" / "model_set" / "paper69.yaml").read_text())["catalog"]
    named = 0
    for name, entry in catalog.items():
        timm_name = entry.get("timm_name", name)
        family, arch = timm_family(timm_name), timm_name.split(".")[0]
        assert family in (entry["components"]["base_architecture"], arch), (name, family)
        named += family != arch
    assert named >= 65 and timm_family("pit_b_224.in1k") == "pit_b_224"
    assert [timm_family(n) for n in ("test_resnet", "test_vit", "test_efficientnet", "convnext_tiny.fb_in1k",
                                     "mixer_b16_224", "vit_small_r26_s32_224", "swin_s3_tiny_224")] == \
        ["CNN", "Transformer", "NAS (CNN)", "CNN", "MLP-Mixer", "Hybrid", "NAS (TFM)"]


def test_timm_model_set_specs():
    """model_set=timm: plain timm names (tags allowed) or a filter; pretrained per model_set.pretrained."""
    cfg = yaml.safe_load((ROOT / "conf" / "model_set" / "timm.yaml").read_text())
    specs = model_specs({**cfg, "models": ["test_resnet", "convnext_tiny.fb_in1k"]})
    assert [(s.timm_name, s.family, s.pretrained, s.components) for s in specs] == \
        [("test_resnet", "CNN", True, {}), ("convnext_tiny.fb_in1k", "CNN", True, {})]
    random = model_specs({**cfg, "pretrained": False, "filter": "test_conv*", "exclude": ["*3"]})
    assert [s.name for s in random] == ["test_convnext", "test_convnext2"] and not random[0].pretrained
    tagged = filtered_names({**cfg, "filter": ["test_vit", "test_resnet"]})  # with weights: one name per tag
    assert tagged == ["test_resnet.r160_in1k", "test_vit.r160_in1k"]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"filter": "tset_*", "pretrained": False},
         r"model_set.filter=tset_\* matches no timm model; did you mean test_\*\?"),
        ({"filter": "convnxt*"}, r"matches no timm model with pretrained weights; did you mean convnext\*\?"),
        ({"filter": "test_mambaout"}, r"matches 1 timm architecture\(s\) \(test_mambaout\) but none has pretrained"),
        ({"filter": "test_vit*", "exclude": "*"}, r"selects no timm model once model_set.exclude=\* is applied"),
        ({"exclude": "test_*"}, r"model_set.exclude removes names from model_set.filter's"),
        ({"filter": 3}, r"model_set.filter=3 must be an fnmatch pattern"),
        ({"filter": "test_vit*", "models": ["test_resnet"]}, r"model_set.models and model_set.filter are both given"),
        ({}, r"model set 'timm' has 0 model\(s\).*or select timm names with model_set.filter"),
    ],
)
def test_timm_model_set_errors(changes, match):
    cfg = {**yaml.safe_load((ROOT / "conf" / "model_set" / "timm.yaml").read_text()), **changes}
    with pytest.raises(SatlabError, match=match):
        model_specs(cfg)


def test_unknown_tags_and_missing_weights_are_named():
    with pytest.raises(SatlabError, match=r"unknown pretrained tag 'fb_in1kk' in model 'convnext_tiny.fb_in1kk'; "
                                          r"did you mean convnext_tiny.fb_in1k, .*its tags: "):
        check_arch("convnext_tiny.fb_in1kk")
    with pytest.raises(SatlabError, match=r"'test_mambaout.x'; it has no pretrained tags"):
        check_arch("test_mambaout.x")
    # timm would log a warning and go on with random weights
    with pytest.raises(SatlabError, match=r"model 'm': timm has no pretrained weights for 'test_mambaout'"):
        pretrained_source(ModelSpec("m", "test_mambaout", pretrained=True))
