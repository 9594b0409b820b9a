"""The one place a Lightning Trainer is built: training, the SAT engine and prediction passes all call
`build_trainer`, each adding only what it must (the engine: `inference_mode=False`, its progress bar).

The settings are `conf/trainer` (a `_target_` node, `pytorch_lightning.Trainer` by default) with the callbacks of
`conf/callbacks` under the key `callbacks` (name -> `_target_` node), as one plain mapping:

    >>> from satlab.lightning import build_trainer
    >>> trainer = build_trainer({"accelerator": "cpu", "enable_progress_bar": False}, max_epochs=1)
    >>> trainer.max_epochs
    1

A mapping without `_target_` builds `pytorch_lightning.Trainer`; options it leaves out are Lightning's defaults,
except that no logger, checkpoint or model summary is written unless asked for. Keyword overrides win over the settings; an
override `callbacks=[...]` replaces the configured callbacks (the engine and prediction passes run no user
callbacks). Hydra is imported lazily (`hydra.utils.instantiate`), so the library imports without it.
"""

from __future__ import annotations

from typing import Any, Mapping

import pytorch_lightning as pl

from satlab.utils import SatlabError, plain

DEFAULT_TARGET = "pytorch_lightning.Trainer"


def trainer_settings(trainer: Mapping[str, Any] | None, callbacks: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """conf/trainer and conf/callbacks as the one plain mapping `build_trainer` takes (and cache keys read)."""
    settings = dict(plain(trainer) or {})
    settings.setdefault("_target_", DEFAULT_TARGET)
    settings["callbacks"] = dict(plain(callbacks) or {})
    return settings


def build_trainer(settings: Mapping[str, Any] | None = None, **overrides: Any) -> pl.Trainer:
    """A Trainer from `settings` (see the module docstring) with `overrides`; bad options -> one SatlabError."""
    from hydra.utils import instantiate

    # satlab writes its own files: no Lightning logger, checkpoints or summaries unless the settings ask for them
    node = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False, **(plain(settings) or {})}
    node.setdefault("_target_", DEFAULT_TARGET)
    node.pop("_partial_", None)
    callbacks = node.pop("callbacks", None) or {}
    if not isinstance(callbacks, Mapping):
        raise SatlabError("callbacks must be a mapping of name -> {_target_: ...}, e.g. "
                          "+callbacks.timer={_target_:pytorch_lightning.callbacks.Timer}")
    if "callbacks" not in overrides:
        overrides["callbacks"] = [_instantiate(n, f"callbacks.{name}") for name, n in callbacks.items() if n]
    try:
        return instantiate(node, **overrides)
    except Exception as err:  # noqa: BLE001 - hydra wraps Lightning's MisconfigurationException, TypeError, ...
        cause = err.__cause__ or err
        raise SatlabError(f"trainer: {str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__}") from None


def _instantiate(node: Any, what: str) -> Any:
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except Exception as err:  # noqa: BLE001 - hydra wraps import and argument errors
        raise SatlabError(f"{what}: cannot build it ({str(err.__cause__ or err).splitlines()[0]})") from None
