"""Gradient attacks in pixel space: PGD (L-inf and L2), FGSM and MI-FGSM, as one iterative routine.

All attacks take a model that maps [0,1] pixels to logits (see `satlab.models.wrapper.PixelModel`), keep the
adversarial image in [0,1] and, by default, round it to 8-bit levels (an image on disk is 8-bit). For L-inf
with a budget that is a multiple of 1/255 on 8-bit inputs, the rounded image stays within the budget exactly.
The random start is drawn per sample from a generator seeded by that sample's seed, so an adversarial example
does not depend on which other images share its batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from satlab.utils import SatlabError

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin")


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def attack_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Summed loss to ascend: cross-entropy, or the margin max_{j!=y} z_j - z_y (Carlini-Wagner)."""
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="sum")
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return (other - true).sum()


@dataclass(frozen=True)
class Attack:
    """An untargeted gradient attack. `step_size=None` means eps/4; `momentum>0` makes it MI-FGSM."""

    name: str = "pgd_linf"
    norm: str = "linf"
    eps: float = 32 / 255
    step_size: float | None = None
    steps: int = 10
    random_start: bool = True
    momentum: float = 0.0
    loss: str = "ce"
    quantize: bool = True

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise SatlabError(f"attack.norm must be one of {NORMS}, got '{self.norm}'")
        if self.loss not in LOSSES:
            raise SatlabError(f"attack.loss must be one of {LOSSES}, got '{self.loss}'")
        if not self.eps >= 0:  # also rejects NaN
            raise SatlabError(f"attack.eps must be >= 0 in [0,1] pixel units (8/255 = 0.0314), got {self.eps}")
        if int(self.steps) < 1:
            raise SatlabError(f"attack.steps must be >= 1, got {self.steps}")
        if self.step_size is not None and not self.step_size > 0:
            raise SatlabError(f"attack.step_size must be > 0 (or null for eps/4), got {self.step_size}")
        if not self.momentum >= 0:
            raise SatlabError(f"attack.momentum must be >= 0, got {self.momentum}")

    @property
    def alpha(self) -> float:
        """The step size actually used."""
        return float(self.step_size) if self.step_size is not None else self.eps / 4

    def describe(self) -> dict:
        """Everything that determines the attack's output (for cache keys and summaries)."""
        return asdict(self) | {"alpha": self.alpha}

    def _projection(self, x: torch.Tensor):
        """The projection onto the budget around `x` intersected with [0,1] (L-inf: one clamp between bounds)."""
        if self.norm == "linf":
            lo, hi = (x - self.eps).clamp(0, 1), (x + self.eps).clamp(0, 1)
            return lambda x_adv: torch.clamp(x_adv, lo, hi)

        def l2(x_adv: torch.Tensor) -> torch.Tensor:
            delta = x_adv - x
            return (x + delta * torch.clamp(self.eps / (_per_sample_norm(delta) + 1e-12), max=1.0)).clamp(0, 1)

        return l2

    def _random_start(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        noise = []
        for seed in seeds.tolist():
            gen = torch.Generator().manual_seed(int(seed))
            if self.norm == "linf":
                noise.append((torch.rand(x.shape[1:], generator=gen) * 2 - 1) * self.eps)
            else:
                d = torch.randn(x.shape[1:], generator=gen)
                r = torch.rand((), generator=gen)
                noise.append(d / (d.norm() + 1e-12) * r * self.eps)
        return (x + torch.stack(noise).to(x)).clamp(0, 1)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial examples of `x` (labels `y`) against `model`; `seeds` [B] seed the random start."""
        if x.numel() == 0 or self.eps == 0:
            return x.detach().clone()
        # Only the input needs a gradient: with the weights frozen, autograd neither keeps what weight
        # gradients would need nor computes them. Restored afterwards.
        trainable = [p for p in model.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        try:
            return self._run(model, x, y, seeds)
        finally:
            for p in trainable:
                p.requires_grad_(True)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor | None) -> torch.Tensor:
        x = x.detach()
        if self.random_start:
            if seeds is None:
                seeds = torch.arange(len(x))
            x_adv = self._random_start(x, seeds)
        else:
            x_adv = x.clone()
        velocity = torch.zeros_like(x)
        project = self._projection(x)
        with torch.enable_grad():
            for _ in range(int(self.steps)):
                x_adv.requires_grad_(True)
                loss = attack_loss(model(x_adv), y, self.loss)
                (grad,) = torch.autograd.grad(loss, x_adv)
                if self.momentum > 0:
                    grad = grad / grad.abs().mean(dim=tuple(range(1, grad.dim())), keepdim=True).clamp_min(1e-12)
                    velocity = self.momentum * velocity + grad
                    grad = velocity
                if self.norm == "linf":
                    step = grad.sign()
                else:
                    step = grad / (_per_sample_norm(grad) + 1e-10)
                x_adv = project(x_adv.detach().add_(step, alpha=self.alpha))
        if self.quantize:
            x_adv = _toward_levels(project(torch.round(x_adv * 255) / 255), x)
        return x_adv.detach()


def _toward_levels(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Move each pixel to the nearest 8-bit level between it and `x` (float noise up to 1e-4 level is ignored).

    The projection after rounding can leave pixels off their levels (the L2 rescaling, float rounding of
    x + delta). Stepping towards x never enlarges |x_adv - x|, so the budget still holds, and the result is
    on 8-bit levels whenever x is.
    """
    level = x_adv * 255
    up = torch.floor(level + 1e-4) / 255
    down = torch.ceil(level - 1e-4) / 255
    return torch.where(x_adv > x, torch.maximum(up, x), torch.minimum(down, x))
