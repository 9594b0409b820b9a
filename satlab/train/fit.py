"""The Trainer from `conf/trainer`, and training a model under a content key (safetensors in the cache).

`conf/trainer` holds Lightning Trainer options. Training passes all of them to `pl.Trainer` (`max_epochs: null`
means each recipe's `epochs`; `callbacks` is a mapping of name -> `_target_` node; `logger` false or a
`_target_` node). The SAT engine's `trainer.predict` takes only `ENGINE_KEYS`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import pytorch_lightning as pl

from satlab.data import DatasetSplits, data_fingerprint
from satlab.models.wrapper import PixelModel
from satlab.train.datamodule import ClassificationDataModule
from satlab.train.module import ClassifierModule
from satlab.train.recipe import Recipe, _plain
from satlab.utils import SatlabError, file_lock, read_cached_weights, stable_hash, write_cached_weights

log = logging.getLogger(__name__)

VERSION = 2  # of the trained-weights cache key; bump when training changes in a way the key does not see
ENGINE_KEYS = ("accelerator", "devices", "num_nodes", "precision", "enable_progress_bar")
# Trainer options that do not change the weights (left out of cache keys; devices x num_nodes enters as `processes`)
NOT_IN_KEY = ("accelerator", "devices", "num_nodes", "enable_progress_bar", "enable_model_summary", "logger",
              "enable_checkpointing", "default_root_dir", "log_every_n_steps", "max_epochs", "_target_")
# Lightning's defaults: an option set to its default keys the same weights as the option left out
TRAINER_DEFAULTS: dict[str, Any] = {"precision": "32-true", "callbacks": {}, "gradient_clip_val": None,
                                    "accumulate_grad_batches": 1}


def processes(trainer_cfg: Mapping[str, Any] | None) -> Any:
    """How many training processes `devices` x `num_nodes` asks for: 1, a number, or the option as written when
    Lightning resolves it at run time ("auto", -1). Several processes (DDP) split each batch: other weights."""
    cfg = _plain(trainer_cfg or {})
    devices, nodes = cfg.get("devices", 1), cfg.get("num_nodes", 1) or 1
    if isinstance(devices, (list, tuple)):
        devices = len(devices)
    elif isinstance(devices, str) and "," in devices:
        devices = len([d for d in devices.split(",") if d.strip()])
    elif isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if devices is None:
        devices = 1
    return devices * nodes if isinstance(devices, int) and isinstance(nodes, int) else f"{devices} x {nodes}"


def key_options(trainer_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The Trainer options that change trained weights, without those at Lightning's defaults (and the number of
    training processes when it is not 1)."""
    opts = {k: v for k, v in _plain(trainer_cfg or {}).items() if k not in NOT_IN_KEY}
    if str(opts.get("precision")) == "32":
        opts["precision"] = "32-true"
    count = processes(trainer_cfg)
    if count != 1:
        opts["processes"] = count
    return {k: v for k, v in opts.items() if k not in TRAINER_DEFAULTS or TRAINER_DEFAULTS[k] != v}


def engine_trainer_kwargs(trainer_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The Trainer options the SAT engine's `trainer.predict` uses (device, precision, progress bar)."""
    cfg = _plain(trainer_cfg or {})
    return {k: cfg[k] for k in ENGINE_KEYS if k in cfg and cfg[k] is not None}


def training_epochs(trainer_cfg: Mapping[str, Any] | None, recipe: Recipe) -> int:
    """`trainer.max_epochs` when set, else the recipe's epochs."""
    value = _plain(trainer_cfg or {}).get("max_epochs")
    if value is None:
        return int(recipe.cfg["epochs"])
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SatlabError(f"trainer.max_epochs must be a positive integer or null (the recipe's), got {value!r}")
    return value


def _instantiate(node: Any, what: str) -> Any:
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except Exception as err:  # noqa: BLE001 - hydra wraps import and argument errors
        raise SatlabError(f"{what}: cannot build it ({str(err.__cause__ or err).splitlines()[0]})") from None


def build_trainer(trainer_cfg: Mapping[str, Any] | None, epochs: int) -> pl.Trainer:
    """A `pl.Trainer` for training from `conf/trainer` options (validation only after the last epoch by default)."""
    kwargs = {k: v for k, v in _plain(trainer_cfg or {}).items() if k != "_target_"}
    callbacks = kwargs.pop("callbacks", None) or {}
    if not isinstance(callbacks, Mapping):
        raise SatlabError("trainer.callbacks must be a mapping of name -> {_target_: ...}, e.g. "
                          "+trainer.callbacks.timer={_target_:pytorch_lightning.callbacks.Timer}")
    logger = kwargs.pop("logger", False)
    if isinstance(logger, Mapping):
        logger = _instantiate(logger, "trainer.logger")
    kwargs.pop("max_epochs", None)
    options = {"enable_checkpointing": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
               "check_val_every_n_epoch": epochs, **kwargs}
    built = [_instantiate(node, f"trainer.callbacks.{name}") for name, node in callbacks.items() if node]
    try:
        return pl.Trainer(max_epochs=epochs, logger=logger, callbacks=built, **options)
    except (TypeError, ValueError) as err:
        raise SatlabError(f"trainer: {str(err).splitlines()[0]}") from None


def weights_key(identity: Mapping[str, Any], net: PixelModel, recipe: Recipe, epochs: int, data_key: str,
                trainer_cfg: Mapping[str, Any] | None, data: DatasetSplits) -> str:
    """Hash of everything that determines trained weights: the starting weights (hash), what is trained, the
    data's content, the recipe, the Trainer options that change results, resolution, classes, a version."""
    return stable_hash({
        "version": VERSION,
        **dict(identity),
        "start_weights": net.fingerprint(),
        "data": data_key,
        "recipe": {**recipe.key(), "epochs": epochs},
        "trainer": key_options(trainer_cfg),
        "resolution": data.resolution,
        "num_classes": data.num_classes,
    })


def train_or_load(
    build: Callable[[], PixelModel],
    name: str,
    recipe: Recipe,
    data: DatasetSplits,
    cache_dir: str | Path,
    trainer_cfg: Mapping[str, Any] | None = None,
    seed: int = 0,
    identity: Mapping[str, Any] | None = None,
    trainable: str = "all",
    subdir: str = "trained",
    module: Callable[..., ClassifierModule] = ClassifierModule,
) -> tuple[PixelModel, dict[str, Any]]:
    """Seed, build the starting network, then load its trained weights from the cache or train (and cache) them.

    Returns the trained PixelModel (eval mode) and info (key, weights path, accuracies, timings, cached).
    `module` builds the LightningModule (e.g. a partial of satlab.train.distill.DistillModule); whatever it adds
    to the training must be in `identity`.
    """
    epochs = training_epochs(trainer_cfg, recipe)
    cfg = recipe.cfg
    dm = ClassificationDataModule(
        data, batch_size=cfg["batch_size"], val_fraction=float(cfg["val_fraction"]), split_seed=int(cfg["split_seed"]),
        augment=cfg["augment"], num_workers=int(cfg["num_workers"]), cache_images=cfg["cache_images"],
    )
    pl.seed_everything(int(seed), verbose=False)
    net = build()
    identity = {**dict(identity or {}), "trainable": trainable, "seed": int(seed)}
    key = weights_key(identity, net, recipe, epochs, dm.fingerprint(), trainer_cfg, data)
    weights = Path(cache_dir) / subdir / f"{name}-{key}.safetensors"
    # one run trains a given key at a time; another waits, then loads; a damaged file is moved aside and retrained
    with file_lock(weights, f"the weights of {name}"):
        info = read_cached_weights(net.model, weights)
        if info is not None:
            eval_key = data_fingerprint(data.eval)
            if info.get("eval_data") != eval_key:  # the key covers the training data, not the evaluation images
                from satlab.train.distill import accuracy

                info |= {"test_accuracy": round(accuracy(net, data.eval), 6), "eval_data": eval_key}
            return net.eval(), info | {"cached": True, "weights": str(weights)}
        lit = module(net, recipe.build("optimizer"), data.num_classes, scheduler=recipe.build("scheduler"),
                     loss=recipe.build("loss"), scheduler_interval=cfg["scheduler_interval"], trainable=trainable,
                     name=name)
        log.info("training %s (%s, %d epochs, seed %d)", name, trainable, epochs, seed)
        trainer = build_trainer(trainer_cfg, epochs)
        start = time.perf_counter()
        trainer.fit(lit, datamodule=dm)
        seconds = time.perf_counter() - start
        val = trainer.callback_metrics.get("val/acc")
        info = {"name": name, "key": key, "epochs": epochs, "trainable": trainable,
                "val_accuracy": None if val is None else round(float(val), 6),
                "train_seconds": round(seconds, 2), "recipe": recipe.key(), "data": dm.fingerprint()}
        if dm.val_set is dm.eval_set:
            info["test_accuracy"] = info["val_accuracy"]  # the final epoch's validation ran on the eval split
        else:
            tested = trainer.test(lit, datamodule=dm, verbose=False)[0]["test/acc"]
            info["test_accuracy"] = round(float(tested), 6)
        net = net.cpu().eval()
        info["fingerprint"] = net.fingerprint()
        info["eval_data"] = data_fingerprint(data.eval)  # what test_accuracy was measured on
        write_cached_weights(net.model, weights, info)
        return net, info | {"cached": False, "weights": str(weights)}
