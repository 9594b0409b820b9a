"""What the SAT engine runs under, shared by a job (`satlab.sat.engine`), `sat.assemble` and the tasks that match
an earlier map: the Lightning Trainer (conf/trainer, forked DDP ranks on several devices), bf16 autocast, what
besides the models determines a row (`row_context`) and the memory budget of phase 2. No Hydra, no wandb.
"""

from __future__ import annotations

from typing import Any, Mapping

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

from satlab.attacks import Attack
from satlab.data import data_fingerprint
from satlab.data.pixels import available_memory
from satlab.lightning import build_trainer
from satlab.models import ModelSet
from satlab.sat.phases import EngineProgress
from satlab.sat.schedule import Budget, target_blocks
from satlab.utils import SatlabError, plain



def make_trainer(trainer_cfg: Mapping[str, Any] | None) -> tuple[pl.Trainer, EngineProgress | None]:
    """The Lightning Trainer the engine runs under: conf/trainer's (`satlab.lightning.build_trainer`) with gradients
    enabled for the attacks, no user callbacks, and the engine's progress bar. Several devices: forked DDP ranks,
    each taking every k-th batch (`RankShare`)."""
    settings = dict(plain(trainer_cfg) or {})
    progress = EngineProgress() if settings.get("enable_progress_bar", True) else None
    engine = {"inference_mode": False, "logger": False, "callbacks": [progress] if progress else []}
    trainer = build_trainer(settings, **engine)
    if trainer.world_size > 1 and settings.get("strategy", "auto") in ("auto", "ddp"):
        # ranks are forked from this process (no re-launch of the script); each takes its share of the batches
        settings |= {"strategy": "ddp_fork", "use_distributed_sampler": False}
        trainer = build_trainer(settings, **engine)
    if trainer.world_size > 1 and settings.get("strategy") != "ddp_fork":
        raise SatlabError(f"trainer.strategy={settings.get('strategy')}: the SAT engine splits its batches "
                          "across devices with strategy ddp (forked ranks); drop trainer.strategy")
    return trainer, progress


def row_context(attack: Attack, data: Dataset, seed: int, trainer: pl.Trainer, amp: bool) -> dict[str, Any]:
    """What, besides the source model, determines a row (see `satlab.sat.cache.row_key`)."""
    context = {"attack": attack.describe(), "data": data_fingerprint(data), "seed": seed,
               "precision": str(trainer.precision), "device": trainer.strategy.root_device.type}
    return context | ({"autocast": "bf16"} if amp else {})


def records_context(attack: Attack, data: Dataset, seed: int, trainer_cfg: Mapping[str, Any] | None = None,
                    amp: bool | None = None) -> dict[str, Any]:
    """The `row_context` a run with these settings records (what a later task matches an earlier map on)."""
    trainer, _ = make_trainer({**(plain(trainer_cfg) or {}), "enable_progress_bar": False})
    return row_context(attack, data, seed, trainer, use_amp(amp, trainer))


def use_amp(amp: bool | None, trainer: pl.Trainer) -> bool:
    """bf16 autocast: on by default on CUDA only (on CPU it is slower and changes the records)."""
    return trainer.strategy.root_device.type == "cuda" if amp is None else bool(amp)


def device_budget(trainer: pl.Trainer) -> Budget:
    """`memory_budget=auto`: a quarter of the device memory free now (of the memory available on CPU), shared by
    the devices' ranks, for the weights of one block of targets; the rest is for activations and images."""
    device = trainer.strategy.root_device
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory()
    return Budget(nbytes=max(free // (4 * trainer.world_size), 1))


def check_budget(models: ModelSet, budget: Budget | None) -> None:
    """A byte budget that holds no single model of the set: SatlabError naming the largest, before any work."""
    if budget is not None and budget.nbytes is not None:
        target_blocks(models.names, {n: models.nbytes(i) for i, n in enumerate(models.names)}, budget)
