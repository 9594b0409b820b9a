"""Models: specs from a model set, the pixel-space wrapper, building from timm or checkpoints, the digits zoo."""

import satlab.models.archs  # noqa: F401  (registers the digits zoo's small Mixer/ResMLP/ConvMixer with timm)
from satlab.models.specs import COMPONENTS, ModelSpec, model_specs

__all__ = ["COMPONENTS", "ModelSpec", "model_specs"]
