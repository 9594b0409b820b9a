"""Small timm architectures for the digits zoo (32x32 inputs), registered with timm's model registry.

timm's MLP-Mixer family entrypoints (mixer_*, resmlp_*, convmixer_*) hard-code patch size and width, so
`timm.create_model('mixer_s16_224', patch_size=4)` fails. This module registers small variants built from
timm's own classes, so `timm.create_model('mixer_digits_p4')` works (keyword arguments still override the
defaults here). Importing it only registers the names below; it has no other side effect.

    mixer_digits_p4     MLP-Mixer (timm MlpMixer): 4x4 patches, 4 blocks, width 64
    resmlp_digits_p4    ResMLP (timm MlpMixer + ResBlock + Affine): 4x4 patches, 4 blocks, width 64
    convmixer_digits_p2 ConvMixer (timm ConvMixer): 2x2 patches, 4 blocks, width 64, 5x5 depthwise
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.convmixer import ConvMixer
from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock, checkpoint_filter_fn

__all__ = ["DIGITS_ARCHS"]

DIGITS_ARCHS = ("mixer_digits_p4", "resmlp_digits_p4", "convmixer_digits_p2")


def _cfg(first_conv: str, **kwargs: Any) -> dict[str, Any]:
    """No pretrained weights (url ''); 32x32 inputs; mean/std of timm's Mixer/ConvMixer cfgs."""
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "fixed_input_size": True,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": first_conv,
        "classifier": "head",
        **kwargs,
    }


# read by timm's @register_model (module attribute `default_cfgs`)
default_cfgs = generate_default_cfgs(
    {
        "mixer_digits_p4": _cfg("stem.proj"),
        "resmlp_digits_p4": _cfg("stem.proj"),
        "convmixer_digits_p2": _cfg("stem.0", fixed_input_size=False),
    }
)


def _mixer(variant: str, pretrained: bool, defaults: dict[str, Any], kwargs: dict[str, Any]) -> MlpMixer:
    kwargs.pop("out_indices", None)
    return build_model_with_cfg(
        MlpMixer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **{**defaults, **kwargs}
    )


@register_model
def mixer_digits_p4(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """MLP-Mixer for 32x32 digits: 4x4 patches (64 tokens), 4 Mixer blocks, width 64."""
    defaults = dict(img_size=32, patch_size=4, num_blocks=4, embed_dim=64, mlp_ratio=(0.5, 4.0))
    return _mixer("mixer_digits_p4", pretrained, defaults, kwargs)


@register_model
def resmlp_digits_p4(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """ResMLP for 32x32 digits: 4x4 patches, 4 ResMLP blocks (Affine norm), width 64."""
    defaults = dict(
        img_size=32, patch_size=4, num_blocks=4, embed_dim=64, mlp_ratio=4, block_layer=ResBlock, norm_layer=Affine
    )
    return _mixer("resmlp_digits_p4", pretrained, defaults, kwargs)


@register_model
def convmixer_digits_p2(pretrained: bool = False, **kwargs: Any) -> ConvMixer:
    """ConvMixer for 32x32 digits: 2x2 patches (16x16 map), 4 blocks, width 64, 5x5 depthwise kernels."""
    kwargs.pop("out_indices", None)
    defaults = dict(dim=64, depth=4, kernel_size=5, patch_size=2)
    return build_model_with_cfg(ConvMixer, "convmixer_digits_p2", pretrained, **{**defaults, **kwargs})
