"""The training layer: DataModule splits, the classifier module (head-only training), the Trainer from config."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from satlab.cli import run
from satlab.data.common import balanced_subset
from satlab.data.digits import digits
from satlab.models.factory import build_model
from satlab.models.specs import ModelSpec
from satlab.train import ClassificationDataModule, Recipe, Training, accuracy
from satlab.train.zoo import ZooSource
from satlab.lightning import build_trainer
from satlab.utils import SatlabError

CONF = Path(__file__).resolve().parents[1] / "conf"
QUIET = {"accelerator": "cpu", "enable_progress_bar": False}
TINY = {"epochs": 1, "batch_size": 16}


@pytest.fixture(scope="module")
def data():
    full = digits(samples_per_class=3)
    return replace(full, train=balanced_subset(full.train, 20))  # 200 training images keep each fit short


def load_or_train(spec, data, recipe, cache, trainer):
    return ZooSource(spec, data, recipe, cache, trainer).load()


def ids_of(ds) -> set[int]:
    return {int(i) for _, _, i in ds}


def test_datamodule_splits_are_disjoint_and_deterministic(data, one_thread):
    a = ClassificationDataModule(data, val_fraction=0.2, split_seed=0)
    b = ClassificationDataModule(data, val_fraction=0.2, split_seed=0)
    c = ClassificationDataModule(data, val_fraction=0.2, split_seed=1)
    train, val, evaluation = ids_of(a.train_set), ids_of(a.val_set), ids_of(a.eval_set)
    assert not (train & val) and not (train & evaluation) and not (val & evaluation)
    assert len(train) + len(val) == len(data.train)
    assert train == ids_of(b.train_set) and val == ids_of(b.val_set)
    assert val != ids_of(c.val_set)
    assert abs(len(val) - 0.2 * len(data.train)) <= 10  # rounded per class
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    plain = ClassificationDataModule(data)  # val_fraction 0: validation on the eval split
    assert ids_of(plain.val_set) == evaluation and len(plain.train_set) == len(data.train)


def test_empty_train_split_is_an_error(data):
    from dataclasses import replace

    with pytest.raises(SatlabError, match="empty train split"):
        ClassificationDataModule(replace(data, train=None))
    with pytest.raises(SatlabError, match="empty train split"):
        ClassificationDataModule(replace(data, train=data.train.take(np.arange(0))))


def test_head_only_training_changes_only_the_head(data, tmp_path, one_thread):
    spec = ModelSpec(name="tiny", timm_name="test_resnet")
    before = build_model(spec, 10, 32, seed=0).model.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    net, info = Training(lambda: build_model(spec, 10, 32, seed=0).train(), "tiny",
                         Recipe.from_config(TINY), data, tmp_path, QUIET, trainable="head").run()
    after = net.model.state_dict()
    head = {f"{n}" for n, _ in net.model.get_classifier().named_parameters()}
    prefix = [n for n, m in net.model.named_modules() if m is net.model.get_classifier()][0]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= {f"{prefix}.{h}" for h in head}, changed
    assert any(k.endswith("running_mean") for k in before)  # batch-norm statistics exist and stayed identical


def test_head_only_needs_a_known_head(data, tmp_path):
    class NoHead(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3))

    from satlab.models.wrapper import PixelModel

    with pytest.raises(SatlabError, match="no known classifier head"):
        Training(lambda: PixelModel(NoHead(), (0.0,) * 3, (1.0,) * 3, (32, 32)), "nohead",
                 Recipe.from_config(TINY), data, tmp_path, QUIET, trainable="head").run()


def test_trainer_options_from_config(data, tmp_path, one_thread):
    spec = ModelSpec(name="tiny", timm_name="test_resnet", train_seed=0)
    cfg = {**QUIET, "max_epochs": 1, "precision": "bf16-mixed",
           "callbacks": {"timer": {"_target_": "pytorch_lightning.callbacks.Timer"}}}
    trainer = build_trainer(cfg, max_epochs=1)
    assert trainer.max_epochs == 1 and any(type(c).__name__ == "Timer" for c in trainer.callbacks)
    _, info = load_or_train(spec, data, {"epochs": 5, "batch_size": 16}, tmp_path, cfg)
    assert info["epochs"] == 1 and not info["cached"]
    _, again = load_or_train(spec, data, {"epochs": 5, "batch_size": 16}, tmp_path, cfg)
    assert again["cached"] and again["key"] == info["key"]
    _, fp32 = load_or_train(spec, data, {"epochs": 5, "batch_size": 16}, tmp_path, {**cfg, "precision": "32-true"})
    assert fp32["key"] != info["key"]  # precision changes the weights, so it changes the key
    from satlab.train.fit import key_options

    assert key_options({**QUIET, "precision": "32-true", "callbacks": {}}) == key_options({}) == {}
    assert key_options({"devices": 1, "num_nodes": 1}) == key_options({"devices": "1"}) == {}
    # DDP splits each batch over the processes: other weights, so another key (2 devices = "0,1" = [0, 1])
    assert key_options({"devices": 2}) == key_options({"devices": "0,1"}) == key_options({"devices": [0, 1]}) \
        == {"processes": 2}
    assert key_options({"devices": 2, "num_nodes": 2}) == {"processes": 4}
    assert key_options({"devices": "auto"}) == {"processes": "auto x 1"}  # resolved by Lightning at run time
    with pytest.raises(SatlabError, match="trainer"):
        build_trainer({"no_such_option": 1}, max_epochs=1)


def test_recipe_is_checked():
    with pytest.raises(SatlabError, match="unknown key"):
        Recipe.from_config({"lr": 0.1})
    merged = Recipe.from_config({"optimizer": {"lr": 0.5}}).cfg["optimizer"]
    assert merged["lr"] == 0.5 and merged["_target_"] == "torch.optim.AdamW"
    # OmegaConf merges: another _target_ keeps the other arguments, as a command-line override would
    replaced = Recipe.from_config({"optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1}}).cfg["optimizer"]
    assert replaced == {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "weight_decay": 0.05}
    assert Recipe.from_config().cfg == Recipe.from_config({}, None).cfg  # the defaults: conf/recipe/default.yaml


def test_zoo_trains_with_trainer_overrides_from_the_command_line(tmp_path, one_thread):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[
            "logger=none", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "attack=fgsm",
            "model_set=digits_zoo_narrow", "model_set.models=[resnet18_s0,resnet18_s1]", "dataset.samples_per_class=2",
            "trainer.max_epochs=1",
            "trainer.precision=bf16-mixed", "+callbacks.timer={_target_:pytorch_lightning.callbacks.Timer}",
            "+trainer.limit_train_batches=3",  # any Trainer option passes through (and keeps this test short)
            f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}"])
    summary = run(cfg)
    assert {info["epochs"] for info in summary["zoo"].values()} == {1}
    assert len(list((tmp_path / "cache" / "zoo").glob("*.safetensors"))) == 2


def test_cached_accuracy_follows_the_evaluation_images(data, tmp_path, one_thread):
    spec = ModelSpec(name="tiny", timm_name="test_resnet", train_seed=0)
    recipe = {"epochs": 1, "batch_size": 16}
    _, first = load_or_train(spec, data, recipe, tmp_path, QUIET)
    other = replace(data, eval=balanced_subset(data.train, 5))  # same training data, other evaluation images
    model, again = load_or_train(spec, other, recipe, tmp_path, QUIET)
    assert again["cached"] and again["key"] == first["key"]
    assert again["test_accuracy"] == round(accuracy(model, other.eval), 6)
    assert again["eval_data"] != first["eval_data"]
