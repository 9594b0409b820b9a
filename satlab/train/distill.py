"""Knowledge distillation: the loss and a LightningModule that trains a student against frozen teacher(s).

Soft (Hinton et al.): (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)).
Hard (DeiT-style, one head, no distillation token): (1 - alpha) * CE(student, y) + alpha * CE(student, argmax teacher);
DeiT's equal weighting is alpha = 0.5. CE is the recipe's loss (label smoothing included).

The teachers are frozen (no parameter requires grad), run under `torch.no_grad()` in eval mode for the whole
run, and see exactly the batch the student sees (after the DataModule's augmentation). With several teachers
their logits are averaged.
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from satlab.data import DatasetSplits
from satlab.models.wrapper import PixelModel
from satlab.train.fit import Training
from satlab.train.module import ClassifierModule
from satlab.train.recipe import Recipe
from satlab.schema import Key, fail
from satlab.utils import SatlabError

warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")  # the frozen teachers

# the distillation settings' rules (the config schema applies them to distill.<key>; the module to its arguments)
DISTILL: dict[str, Key] = {
    "alpha": Key("number", 0, 1, note="the weight of the teacher term"),
    "temperature": Key("number", 0, open_low=True, note="it divides the logits"),
    "mode": Key("choice", choices=("soft", "hard")),
}


def check_distill(alpha: float, temperature: float, mode: str) -> None:
    """SatlabError unless alpha is in [0, 1], temperature > 0 and mode is soft or hard (rules: DISTILL)."""
    for key, value in (("alpha", alpha), ("temperature", temperature), ("mode", mode)):
        fail(f"distill.{key}", value, DISTILL[key])


def distill_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    temperature: float,
    mode: str = "soft",
    ce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> torch.Tensor:
    """The distillation loss of student logits against teacher logits and labels (batch mean)."""
    label_term = ce(student, target)
    if mode == "hard":
        return (1.0 - alpha) * label_term + alpha * F.cross_entropy(student, teacher.argmax(1))
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean", log_target=True)
    return (1.0 - alpha) * label_term + alpha * t * t * kl


class DistillModule(ClassifierModule):
    """ClassifierModule whose loss is `distill_loss` against frozen `teachers` (pixels in, logits out)."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable,
        num_classes: int,
        teachers: Sequence[nn.Module] = (),
        alpha: float = 0.5,
        temperature: float = 4.0,
        mode: str = "soft",
        **kwargs: Any,
    ) -> None:
        super().__init__(net, optimizer, num_classes, **kwargs)
        check_distill(alpha, temperature, mode)
        if not teachers:
            raise SatlabError("distillation needs at least one teacher")
        self.teachers = nn.ModuleList(teachers)
        self.teachers.requires_grad_(False)
        self.teachers.eval()
        self.alpha, self.temperature, self.mode = float(alpha), float(temperature), mode

    def train(self, mode: bool = True) -> "DistillModule":
        super().train(mode)
        self.teachers.eval()  # frozen teachers never switch to training mode (BN statistics, dropout)
        return self

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self.teachers.eval()  # Lightning restores per-module modes after validation; keep the teachers in eval

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Mean logits of the teachers on `x` (no graph)."""
        with torch.no_grad():
            return torch.stack([t(x) for t in self.teachers]).mean(0)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        logits = self.net(x)
        teacher = self.teacher_logits(x)
        if teacher.shape != logits.shape:
            raise SatlabError(f"teacher logits have shape {tuple(teacher.shape)} but the student's "
                              f"{tuple(logits.shape)}: teacher and student must predict the same classes")
        loss = distill_loss(logits, teacher, y, self.alpha, self.temperature, self.mode, self.loss_fn)
        self.train_acc(logits.argmax(1), y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss


def student_training(
    build: Callable[[], PixelModel],
    name: str,
    recipe: Recipe,
    data: DatasetSplits,
    cache_dir: str | Path,
    trainer_cfg: Mapping[str, Any] | None,
    seed: int,
    identity: Mapping[str, Any],
    teachers: Sequence[PixelModel] = (),
    alpha: float = 0.5,
    temperature: float = 4.0,
    mode: str = "soft",
) -> Training:
    """A student's training at `seed` (cached in `<cache>/distilled/`), with the teachers or, with none, the baseline.

    The baseline and every distilled student at one seed start from the same weights and see the same data order
    and augmentation: `Training` seeds before `build`, and the frozen teachers draw no random numbers. The key
    adds the teachers' weights hashes (PixelModel.fingerprint), alpha, temperature and mode to the training key.
    """
    setting = None
    module: Callable[..., ClassifierModule] = ClassifierModule
    if teachers:
        check_distill(alpha, temperature, mode)
        setting = {"teachers": [t.fingerprint() for t in teachers], "alpha": float(alpha),
                   "temperature": float(temperature), "mode": mode}
        module = partial(DistillModule, teachers=list(teachers), alpha=alpha, temperature=temperature, mode=mode)
    return Training(build, name, recipe, data, cache_dir, trainer_cfg, seed=seed,
                    identity={**dict(identity), "distill": setting}, subdir="distilled", module=module)
