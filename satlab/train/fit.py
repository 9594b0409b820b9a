"""Training a model under a content key: the weights are cached as safetensors, with what was measured beside them.

`Training` is one training run (a network to build, a recipe, data, Trainer settings, a seed). Its key hashes
everything that determines the trained weights, so a second run with the same key loads them instead of
training, and `stored_info` reads what a cached run recorded (its content key among it) without loading them.
The Trainer comes from `satlab.lightning.build_trainer` (conf/trainer + conf/callbacks; `max_epochs: null` means
each recipe's `epochs`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping

import pytorch_lightning as pl

from satlab.data import DatasetSplits, data_fingerprint
from satlab.models.factory import module_bytes
from satlab.models.wrapper import PixelModel
from satlab.train.datamodule import ClassificationDataModule
from satlab.train.module import ClassifierModule, accuracy
from satlab.train.recipe import Recipe
from satlab.lightning import build_trainer
from satlab.utils import (check_free_space, checksum_problem, file_lock, plain, read_cached_weights, stable_hash,
                          write_cached_weights)

log = logging.getLogger(__name__)

VERSION = 2  # of the trained-weights cache key; bump when training changes in a way the key does not see
# Trainer options that do not change the weights (left out of cache keys; devices x num_nodes enters as `processes`)
NOT_IN_KEY = ("accelerator", "devices", "num_nodes", "enable_progress_bar", "enable_model_summary", "logger",
              "enable_checkpointing", "default_root_dir", "log_every_n_steps", "max_epochs", "_target_", "_partial_",
              "num_sanity_val_steps")
# Lightning's defaults: an option set to its default keys the same weights as the option left out
TRAINER_DEFAULTS: dict[str, Any] = {"precision": "32-true", "callbacks": {}, "gradient_clip_val": None,
                                    "accumulate_grad_batches": 1}


def processes(trainer_cfg: Mapping[str, Any] | None) -> Any:
    """How many training processes `devices` x `num_nodes` asks for: 1, a number, or the option as written when
    Lightning resolves it at run time ("auto", -1). Several processes (DDP) split each batch: other weights."""
    cfg = plain(trainer_cfg or {})
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
    opts = {k: v for k, v in plain(trainer_cfg or {}).items() if k not in NOT_IN_KEY}
    if str(opts.get("precision")) == "32":
        opts["precision"] = "32-true"
    count = processes(trainer_cfg)
    if count != 1:
        opts["processes"] = count
    return {k: v for k, v in opts.items() if k not in TRAINER_DEFAULTS or TRAINER_DEFAULTS[k] != v}


def training_epochs(trainer_cfg: Mapping[str, Any] | None, recipe: Recipe) -> int:
    """`trainer.max_epochs` when set, else the recipe's epochs."""
    value = plain(trainer_cfg or {}).get("max_epochs")
    return int(recipe.cfg["epochs"]) if value is None else int(value)


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


@dataclass
class Training:
    """One training run of a network, identified by the content key of what it produces.

    Args:
        build: builds the starting network (called after seeding, so its random init is reproducible).
        name: the model's name (file names, logs).
        recipe, data, cache_dir: how, on what, and where the weights are cached (`<cache_dir>/<subdir>/`).
        trainer_cfg: conf/trainer + conf/callbacks (`satlab.lightning.trainer_settings`).
        seed: seeds the run (init, data order, augmentation).
        identity: what else determines the weights (architecture, source weights, distillation setting, ...).
        trainable: "all" or "head" (linear probe).
        module: builds the LightningModule (e.g. a partial of `satlab.train.distill.DistillModule`); whatever it
            adds to the training must be in `identity`.
    """

    build: Callable[[], PixelModel]
    name: str
    recipe: Recipe
    data: DatasetSplits
    cache_dir: str | Path
    trainer_cfg: Mapping[str, Any] | None = None
    seed: int = 0
    identity: Mapping[str, Any] = field(default_factory=dict)
    trainable: str = "all"
    subdir: str = "trained"
    module: Callable[..., ClassifierModule] = ClassifierModule

    @cached_property
    def datamodule(self) -> ClassificationDataModule:
        cfg = self.recipe.cfg
        return ClassificationDataModule(
            self.data, batch_size=cfg["batch_size"], val_fraction=float(cfg["val_fraction"]),
            split_seed=int(cfg["split_seed"]), augment=cfg["augment"], num_workers=int(cfg["num_workers"]),
            cache_images=cfg["cache_images"],
        )

    def _start(self) -> tuple[PixelModel, ClassificationDataModule, str, Path]:
        """Seed, build the starting network; the DataModule, the key and the weights file."""
        dm = self.datamodule
        pl.seed_everything(int(self.seed), verbose=False)
        net = self.build().train()  # training starts in training mode (Lightning keeps the modules' modes)
        identity = {**dict(self.identity), "trainable": self.trainable, "seed": int(self.seed)}
        epochs = training_epochs(self.trainer_cfg, self.recipe)
        key = weights_key(identity, net, self.recipe, epochs, dm.fingerprint(), self.trainer_cfg, self.data)
        return net, dm, key, Path(self.cache_dir) / self.subdir / f"{self.name}-{key}.safetensors"

    def stored_info(self) -> dict[str, Any] | None:
        """What a cached run of this key recorded (its `fingerprint` among it), without loading the weights;
        None when nothing is cached."""
        *_, weights = self._start()
        meta = weights.with_suffix(".json")
        if not (weights.is_file() and meta.is_file()) or checksum_problem(weights) or checksum_problem(meta):
            return None  # `run` moves damaged files aside (or takes an older satlab's after checking them)
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None  # `run` moves a damaged file aside and trains again
        return info if isinstance(info, dict) else None

    def run(self) -> tuple[PixelModel, dict[str, Any]]:
        """Load the trained weights from the cache, or train (and cache) them. Returns the trained PixelModel
        (eval mode) and info (key, weights path, accuracies, timings, cached)."""
        net, dm, key, weights = self._start()
        # one run trains a given key at a time; another waits, then loads; a damaged file is moved aside and retrained
        with file_lock(weights, f"the weights of {self.name}"):
            info = read_cached_weights(net.model, weights, net.fingerprint)
            if info is not None:
                eval_key = data_fingerprint(self.data.eval)
                if info.get("eval_data") != eval_key:  # the key covers the training data, not the evaluation images
                    info |= {"test_accuracy": round(accuracy(net, self.data.eval), 6), "eval_data": eval_key}
                return net.eval(), info | {"cached": True, "weights": str(weights)}
            net, dm, key, weights = self._start()  # afresh: a failed load may have changed the network
            check_free_space(weights.parent, module_bytes(net.model) + 2**16, f"the weights of {self.name}")
            net, info = self._train(net, dm, key)
            write_cached_weights(net.model, weights, info)
            return net, info | {"cached": False, "weights": str(weights)}

    def _train(self, net: PixelModel, dm: ClassificationDataModule, key: str) -> tuple[PixelModel, dict[str, Any]]:
        recipe, epochs = self.recipe, training_epochs(self.trainer_cfg, self.recipe)
        lit = self.module(net, recipe.build("optimizer"), self.data.num_classes, scheduler=recipe.build("scheduler"),
                          loss=recipe.build("loss"), scheduler_interval=recipe.cfg["scheduler_interval"],
                          trainable=self.trainable, name=self.name)
        log.info("training %s (%s, %d epochs, seed %d)", self.name, self.trainable, epochs, self.seed)
        trainer = build_trainer(self.trainer_cfg, max_epochs=epochs, num_sanity_val_steps=0,
                                check_val_every_n_epoch=epochs)
        start = time.perf_counter()
        trainer.fit(lit, datamodule=dm)
        seconds = time.perf_counter() - start
        val = trainer.callback_metrics.get("val/acc")
        info = {"name": self.name, "key": key, "epochs": epochs, "trainable": self.trainable,
                "val_accuracy": None if val is None else round(float(val), 6),
                "train_seconds": round(seconds, 2), "recipe": recipe.key(), "data": dm.fingerprint()}
        if dm.val_set is dm.eval_set:
            info["test_accuracy"] = info["val_accuracy"]  # the final epoch's validation ran on the eval split
        else:
            tested = trainer.test(lit, datamodule=dm, verbose=False)[0]["test/acc"]
            info["test_accuracy"] = round(float(tested), 6)
        net = net.cpu().eval()
        info["fingerprint"] = net.fingerprint()
        info["eval_data"] = data_fingerprint(self.data.eval)  # what test_accuracy was measured on
        return net, info
