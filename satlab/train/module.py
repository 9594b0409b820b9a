"""ClassifierModule: a network trained with a loss, an optimizer and a scheduler that all come from config.

The pieces are reusable on their own (distillation builds on them): `head_module` finds a timm model's
classifier, `freeze_all_but` makes head-only training leave every other weight and buffer bit-identical,
`configure_optimization` fills the run-dependent scheduler arguments, and `accuracy` scores a model on a
dataset with torchmetrics.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from satlab.utils import SatlabError


def inner(net: nn.Module) -> nn.Module:
    """The classifier inside a PixelModel (or the module itself)."""
    return getattr(net, "model", net)


def head_module(net: nn.Module, name: str = "model") -> nn.Module:
    """The classifier head of a timm model (inside a PixelModel); SatlabError when it has none with weights."""
    model = inner(net)
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        raise SatlabError(
            f"model '{name}' has no known classifier head (timm's get_classifier() with weights), so head-only "
            "training (train.mode=head) cannot tell what to train; use train.mode=full"
        )
    return head


def freeze_all_but(net: nn.Module, keep: nn.Module) -> None:
    """requires_grad only for `keep`'s parameters."""
    kept = {id(p) for p in keep.parameters()}
    for p in net.parameters():
        p.requires_grad_(id(p) in kept)


def configure_optimization(
    params: list[nn.Parameter], optimizer: Callable, scheduler: Callable | None, total_steps: int, interval: str
) -> Any:
    """Optimizer (and scheduler) from partials; fills `total_steps` and `max_lr` (the optimizer's lr) when left out."""
    opt = optimizer(params=params)
    if scheduler is None:
        return opt
    fill: dict[str, Any] = {}
    func = getattr(scheduler, "func", scheduler)
    given = getattr(scheduler, "keywords", {})
    accepted = inspect.signature(func).parameters
    if "total_steps" in accepted and "total_steps" not in given and "epochs" not in given:
        fill["total_steps"] = int(total_steps)
    if "max_lr" in accepted and "max_lr" not in given:
        fill["max_lr"] = opt.defaults["lr"]
    try:
        sched = scheduler(opt, **fill)
    except (ZeroDivisionError, ValueError) as err:
        raise SatlabError(f"the scheduler cannot run {total_steps} step(s) ({err or type(err).__name__}); train "
                          "longer, use a smaller batch_size, or set the recipe's scheduler to null") from None
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}


def accuracy(model: nn.Module, data: Any, batch_size: int = 256) -> float:
    """Top-1 accuracy (torchmetrics) of `model` (eval mode, no gradients) on a dataset of (image, label, id)."""
    from torch.utils.data import DataLoader

    model.eval()
    metric = None
    with torch.inference_mode():
        for x, y, _ in DataLoader(data, batch_size=batch_size):
            logits = model(x)
            metric = metric or MulticlassAccuracy(num_classes=logits.shape[1], average="micro")
            metric.update(logits.argmax(1), y)
    return float(metric.compute()) if metric is not None else 0.0


class ClassifierModule(pl.LightningModule):
    """Trains `net` (pixels in, logits out) with `loss`; logs loss and accuracy (torchmetrics).

    `trainable="head"` trains only the classifier head: every other parameter is frozen and kept in eval mode,
    so batch-norm statistics and dropout do not change either.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable,
        num_classes: int,
        scheduler: Callable | None = None,
        loss: nn.Module | None = None,
        scheduler_interval: str = "step",
        trainable: str = "all",
        name: str = "model",
    ) -> None:
        super().__init__()
        if trainable not in ("all", "head"):
            raise SatlabError(f"trainable must be 'all' or 'head', got {trainable!r}")
        self.net = net
        self.optimizer_fn = optimizer
        self.scheduler_fn = scheduler
        self.loss_fn = loss if loss is not None else nn.CrossEntropyLoss()
        self.scheduler_interval = scheduler_interval
        self.head = head_module(net, name) if trainable == "head" else None
        if self.head is not None:
            freeze_all_but(net, self.head)
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def train(self, mode: bool = True) -> "ClassifierModule":
        super().train(mode)
        if self.head is not None and mode:
            self.net.eval()
            self.head.train(True)
        return self

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.head is not None:  # Lightning restores per-module modes itself; frozen parts stay in eval mode
            self.train(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        logits = self.net(x)
        loss = self.loss_fn(logits, y)
        self.train_acc(logits.argmax(1), y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y, _ = batch
        self.val_acc(self.net(x).argmax(1), y)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y, _ = batch
        self.test_acc(self.net(x).argmax(1), y)
        self.log("test/acc", self.test_acc)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.net.parameters() if p.requires_grad]
        return configure_optimization(params, self.optimizer_fn, self.scheduler_fn,
                                      int(self.trainer.estimated_stepping_batches), self.scheduler_interval)
