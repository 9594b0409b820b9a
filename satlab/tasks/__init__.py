"""Tasks: one module per `task=` option, each with `run(cfg) -> dict`. Hydra and wandb live here and in cli."""

from __future__ import annotations

import importlib
from typing import Callable

from omegaconf import DictConfig

from satlab.utils import SatlabError

TASKS = ("sat", "analyze", "ensemble", "train", "compare", "cross_dataset", "distill")


def get_task(name: str) -> Callable[[DictConfig], dict]:
    """The `run` function of task `name`."""
    if name not in TASKS:
        raise SatlabError(f"unknown task '{name}'; choose one of {', '.join(TASKS)}")
    return importlib.import_module(f"satlab.tasks.{name}").run
