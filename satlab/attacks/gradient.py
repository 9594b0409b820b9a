"""Gradient attacks in pixel space: PGD (L-inf and L2), FGSM and MI-FGSM, as one iterative routine.

All attacks take a model that maps [0,1] pixels to logits (see `satlab.models.wrapper.PixelModel`) and keep the
adversarial image in [0,1]. With `quantize` (the default for the L-inf attacks) the image is put on 8-bit
levels, as an image on disk, without leaving the budget: L-inf budgets are snapped to whole levels (k/255) and
the attack says so in `notes`; L2 uses a budget-preserving rounding (`satlab.attacks.rounding`).
The random start is drawn per sample from a generator seeded by that sample's seed, so an adversarial example
does not depend on which other images share its batch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from satlab.attacks.rounding import LEVELS, round_l2, snap_linf, toward_levels
from satlab.schema import BOOL, COUNT, Key, fail
from satlab.utils import SatlabError

log = logging.getLogger(__name__)

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


def level_text(eps: float) -> str:
    """'16/255 (0.0627)' for a budget on whole levels, else '0.03'."""
    levels = eps * LEVELS
    return f"{round(levels)}/255 ({eps:.4g})" if abs(levels - round(levels)) < 1e-6 else f"{eps:.4g}"


# An attack's fields (satlab.attacks.Attack); its budget `eps` depends on the norm.
ATTACK: dict[str, Key] = {
    "norm": Key("choice", choices="satlab.attacks.gradient:NORMS"),
    "loss": Key("choice", choices="satlab.attacks.gradient:LOSSES"),
    "steps": COUNT,
    "step_size": Key("number", 0, open_low=True, nullable=True, null_means="eps/4"),
    "momentum": Key("number", 0),
    "random_start": BOOL,
    "quantize": BOOL,
}
ATTACK_EPS: dict[str, Key] = {
    "linf": Key("number", 0, 1, open_low=True, note="L-inf, in pixel units: 8/255 = 0.0314"),
    "l2": Key("number", 0, open_low=True, note="the L2 norm over all 3xHxW values, in [0,1] pixel units"),
}



def check_attack(fields: Any) -> None:
    """Check an attack's fields (an object with ATTACK's attributes and `eps`, e.g. an `Attack`)."""
    for name, rule in ATTACK.items():
        fail(f"attack.{name}", getattr(fields, name), rule)
    fail("attack.eps", fields.eps, ATTACK_EPS[fields.norm])


@dataclass(frozen=True)
class Attack:
    """An untargeted gradient attack. `step_size=None` means eps/4; `momentum>0` makes it MI-FGSM.

    `eps` is the budget the attack uses: an L-inf budget off the 1/255 grid is snapped to the nearest level when
    `quantize` is on, and `notes` says so (human-readable; not part of `describe()`).
    """

    name: str = "pgd_linf"
    norm: str = "linf"
    eps: float = 32 / 255
    step_size: float | None = None
    steps: int = 10
    random_start: bool = True
    momentum: float = 0.0
    loss: str = "ce"
    quantize: bool = True
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        check_attack(self)  # one rule per field (ATTACK, ATTACK_EPS); every budget > 0
        if self.norm == "linf" and self.quantize and snap_linf(self.eps) != self.eps:
            self._snap()

    def _snap(self) -> None:
        """Put an L-inf budget on whole levels; say so unless it was a rounded k/255 (within 1/1000 level)."""
        snapped = snap_linf(self.eps)
        if snapped == 0:
            raise SatlabError(
                f"attack.eps={self.eps:g} is less than half an 8-bit level (1/255 = 0.0039): the 8-bit image "
                "could not move; use attack.eps >= 0.0039 or attack.quantize=false")
        if abs(self.eps * LEVELS - round(self.eps * LEVELS)) > 1e-3:
            note = (f"attack.eps={self.eps:g} is not a whole number of 8-bit levels; the quantized L-inf attack "
                    f"uses the nearest, {level_text(snapped)} (ask for it exactly, e.g. attack.eps={snapped!r}, "
                    "or set attack.quantize=false)")
            log.warning(note)
            object.__setattr__(self, "notes", (*self.notes, note))
        object.__setattr__(self, "eps", snapped)

    @property
    def alpha(self) -> float:
        """The step size actually used."""
        return float(self.step_size) if self.step_size is not None else self.eps / 4

    def describe(self) -> dict:
        """Everything that determines the attack's output, with the budget it uses (for cache keys, summaries)."""
        desc = {k: v for k, v in asdict(self).items() if k != "notes"} | {"alpha": self.alpha}
        if self.norm == "l2" and self.quantize:
            desc["l2_rounding"] = "aligned"  # budget-preserving: records made with the old rounding are not reused
        return desc

    def summary(self) -> str:
        """One line for the console: the effective budget and steps."""
        eps = level_text(self.eps) if self.norm == "linf" else f"{self.eps:g}"
        rounding = "8-bit" if self.quantize else "float"
        return (f"{self.name}: {self.norm} eps={eps}, {self.steps} step(s) of {self.alpha:.4g}, "
                f"random_start={self.random_start}, loss={self.loss}, {rounding} images")

    def check_resolution(self, resolution: int) -> None:
        """An L2 budget above the diameter sqrt(3 R^2) of the pixel cube constrains nothing: surely a unit slip."""
        diameter = math.sqrt(3 * resolution * resolution)
        if self.norm == "l2" and self.eps > diameter:
            raise SatlabError(
                f"attack.eps={self.eps:g} is larger than the L2 distance between any two {resolution}x{resolution} "
                f"images ({diameter:.4g}), so it constrains nothing; L2 budgets are in [0,1] pixel units over all "
                "values (ImageNet-size images: 0.25-3)")

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
        if x.numel() == 0:
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
        if self.quantize and self.norm == "l2":
            x_adv = round_l2(x_adv, x, self.eps)
        elif self.quantize:
            x_adv = toward_levels(project(torch.round(x_adv * LEVELS) / LEVELS), x)
        return x_adv.detach()
