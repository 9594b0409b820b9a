"""Models: specs from a model set, the pixel-space wrapper, building from timm or checkpoints, the digits zoo."""

from satlab.models.specs import COMPONENTS, ModelSpec, model_specs

__all__ = ["COMPONENTS", "ModelSpec", "model_specs"]
