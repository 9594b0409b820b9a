"""The pixel-space wrapper: every model takes [0,1] RGB pixels at the dataset's resolution.

Each model applies its own preprocessing inside `forward` — a resize (only when its input size differs from
the batch's) and its own mean/std, both from `timm.data.resolve_model_data_config`. Attacks therefore work in
one pixel space shared by all models, and their budgets (eps in [0,1] pixel units) mean the same for all.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn


class PixelModel(nn.Module):
    """Wraps a classifier: pixels in [0,1] -> (resize) -> (x - mean) / std -> logits."""

    def __init__(
        self,
        model: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        input_size: tuple[int, int],
        interpolation: str = "bilinear",
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.interpolation = interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"

    @classmethod
    def from_timm(cls, model: nn.Module, overrides: Mapping[str, Any] | None = None) -> "PixelModel":
        """Wrap a timm model with the preprocessing timm resolves for it (`overrides` win, e.g. input_size)."""
        from timm.data import resolve_model_data_config

        cfg = dict(resolve_model_data_config(model))
        cfg.update(overrides or {})
        size = cfg["input_size"][-2:]
        return cls(model, tuple(cfg["mean"]), tuple(cfg["std"]), tuple(size), str(cfg.get("interpolation", "bilinear")))

    def fingerprint(self) -> str:
        """Hash of what determines this model's outputs: the inner weights and the preprocessing."""
        from satlab.utils import stable_hash, state_dict_hash

        preprocessing = {
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "input_size": list(self.input_size),
            "interpolation": self.interpolation,
        }
        return stable_hash({"weights": state_dict_hash(self.model.state_dict()), "preprocessing": preprocessing})

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels [B,3,H,W] in [0,1] -> the normalised tensor the inner model expects."""
        if tuple(x.shape[-2:]) != self.input_size:
            mode = self.interpolation
            shrink = x.shape[-2] > self.input_size[0] or x.shape[-1] > self.input_size[1]
            x = F.interpolate(
                x,
                size=self.input_size,
                mode=mode,
                align_corners=False if mode != "nearest" else None,
                antialias=shrink and mode != "nearest",
            )
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))
