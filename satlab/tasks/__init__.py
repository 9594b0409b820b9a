"""Tasks: one module per `task=` option, each with `run(cfg) -> dict`. Hydra and wandb live here and in cli.

A task outside satlab names its module in its config: `task.module: mypackage.mytask` (an importable module with
a `run(cfg) -> dict`), e.g. in a `task/<name>.yaml` of one's own `--config-dir` (docs/extending.md).
"""

from __future__ import annotations

import importlib
from typing import Callable

from omegaconf import DictConfig

from satlab.schema import one_line
from satlab.utils import SatlabError

TASKS = ("sat", "analyze", "ensemble", "train", "compare", "cross_dataset", "distill")


def get_task(name: str, module: str | None = None) -> Callable[[DictConfig], dict]:
    """The `run` function of task `name`: satlab's own, or that of `module` (the config's `task.module`)."""
    if module:
        try:
            found = importlib.import_module(str(module))
        except ModuleNotFoundError as err:
            own = err.name is not None and (str(module) == err.name or str(module).startswith(f"{err.name}."))
            if not own:  # the module was found, but it imports one that is missing
                raise SatlabError(f"task.module={module} fails on import: {type(err).__name__}: {err}; install "
                                  f"what it imports") from None
            raise SatlabError(f"task.module={module} cannot be imported ({err}); put the module on the Python "
                              "path (pip install -e your package, or PYTHONPATH=...)") from None
        except Exception as err:  # noqa: BLE001 - a SyntaxError, or any error the module raises when imported
            raise SatlabError(f"task.module={module} fails on import: {type(err).__name__}: {one_line(str(err))}; "
                              "fix the module") from None
        run = getattr(found, "run", None)
        if not callable(run):
            raise SatlabError(f"task.module={module} has no run(cfg) function")
        return run
    if name not in TASKS:
        raise SatlabError(f"unknown task '{name}'; choose one of {', '.join(TASKS)} (or give task.module=<module>)")
    return importlib.import_module(f"satlab.tasks.{name}").run
