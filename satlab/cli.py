"""The `satlab` command: the only place where Hydra meets the library.

`main` composes the config; `run` seeds and dispatches to `satlab.tasks.<task.name>.run(cfg)`.
A SatlabError (bad input) becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from satlab.utils import SatlabError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def run(cfg: DictConfig) -> dict:
    """Run the task named by `cfg.task.name` and return its summary."""
    from satlab.tasks import get_task

    os.environ.setdefault("WANDB_SILENT", "true")
    warnings.filterwarnings("ignore", message=".*(LeafSpec|does not have many workers|litlogger).*")
    import pytorch_lightning as pl

    for name in ("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # offline retries: our own error says what to do

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    return get_task(str(cfg.task.name))(cfg)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_entry(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except SatlabError as err:
        print(f"satlab: error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Console entry point (`satlab ...`)."""
    _hydra_entry()


if __name__ == "__main__":
    main()
