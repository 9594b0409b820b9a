"""Bad input: every mistake gets one line `satlab: error: ...`, exit status 2, and nothing written.

BAD_INPUTS is the README's table: (command-line arguments, a fragment of the expected message). Add a case: one
line. `{name}` in an argument is replaced by the path of a fixture input from `inputs` below (written on demand).
The CLI runs in-process (`satlab.cli.main`), on timm's tiny random models, so no case trains or downloads.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from conftest import make_class_tree, make_imagefolder
from satlab import cli
from satlab.sat.records import write_matrix

BASE = ["model_set=timm_tiny", "dataset.samples_per_class=2", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false"]

BAD_INPUTS: list[tuple[list[str], str]] = [
    # config names and syntax (Hydra finds these; satlab turns them into one line)
    (["experiment=nosuch"], "unknown experiment 'nosuch'; choose one of: cross_dataset_digits,"),
    (["dataset=nosuch"], "Could not find 'dataset/nosuch'; Available options in 'dataset': digits"),
    (["task=nosuch"], "Could not find 'task/nosuch'"),
    (["sat.nosuch=1"], "Could not override 'sat.nosuch'; To append to your config use +sat.nosuch=1"),
    (["attack.eps=("], "Error parsing override 'attack.eps=('"),
    # types and ranges of config values (satlab.tasks.checks.SCHEMA)
    (["seed=abc"], "seed must be an integer >= 0 and <= 4294967295"),
    (["seed=1.5"], "seed must be an integer >= 0 and <= 4294967295"),
    (["seed=-1"], "seed must be an integer >= 0"),
    (["sat.resume=maybe"], "sat.resume must be true or false, got 'maybe'"),
    (["sat.print_table=1"], "sat.print_table must be true or false, got 1"),
    (["sat.batch_size=0"], "sat.batch_size must be an integer >= 1, got 0"),
    (["sat.num_workers=-1"], "sat.num_workers must be an integer >= 0, got -1"),
    (["sat.eps_s=0"], "sat.eps_s must be > 0"),
    (["trainer.precision=bogus"], "trainer.precision must be one of"),
    (["trainer.accelerator=quantum"], "trainer.accelerator must be one of auto"),
    (["logger.mode=sometimes"], "logger.mode must be one of offline, online, disabled"),
    (["task=analyze", "analyze.n_estimators=1.5"], "analyze.n_estimators must be an integer, got 1.5"),
    (["task=analyze", "analyze.test_size=abc"], "analyze.test_size must be a finite number, got 'abc'"),
    # model sets
    (["model_set.models=[test_resnet,resnet50]"], "model(s) resnet50 not in the catalog of model set 'timm_tiny'"),
    (["model_set.models=[test_resnet,resnet50]"], "set model_set.uncatalogued=random (random init, untrained)"),
    (["model_set.uncatalogued=random", "model_set.models=[test_resnet,resnet5]"], "unknown model 'resnet5'"),
    (["model_set.uncatalogued=maybe"], "model_set.uncatalogued must be one of refuse, random, pretrained"),
    (["model_set.models=[]"], "has 0 model(s); SAT compares pairs"),
    (["model_set.models=[test_resnet]"], "has 1 model(s); SAT compares pairs"),
    (["model_set.models=[test_resnet,test_resnet]"], "lists test_resnet more than once"),
    (["dataset.resolution=30"], "model 'test_vit' cannot take the dataset's 30 x 30 images"),
    (["+model_set.catalog.test_resnet.checkpoint_path={ckpt7}"], "does not fit the model built for the dataset's 10"),
    (["model_set=paper69", "model_set.models=[resnet50,vit_small_patch16_224]"],
     "predicts 1000 classes but the dataset has 10"),
    # data
    (["dataset=imagefolder"], "dataset.root is required"),
    (["dataset=imagefolder", "dataset.root=/no/such/folder"], "dataset.root '/no/such/folder' is not an existing"),
    (["dataset=imagefolder", "dataset.root={one_class}", "dataset.resize=32", "dataset.resolution=32"],
     "has 1 class(es) (cat); SAT needs at least 2"),
    (["dataset=imagefolder", "dataset.root={one_class_eval}", "dataset.resize=32", "dataset.resolution=32"],
     "are all of one class (cat); SAT needs images of at least 2 classes"),
    (["dataset=imagefolder", "dataset.root={tree}", "dataset.resize=16", "dataset.resolution=32"],
     "dataset.resize (16) must be >= dataset.resolution (32)"),
    (["dataset.samples_per_class=0"], "dataset.samples_per_class must be a positive integer"),
    # attacks (their checks live in satlab.attacks)
    (["attack.eps=-0.1"], "attack.eps"),
    (["attack.steps=0"], "attack.steps"),
]


def write_tiny_matrix(path: Path) -> Path:
    """A symmetric SAT matrix of timm_tiny's four models (for cheap task=analyze runs)."""
    names = ["test_resnet", "test_vit", "test_convnext", "test_efficientnet"]
    sat = np.array([[4.6, 1.0, 2.0, 1.5], [1.0, 4.6, 0.5, 1.2], [2.0, 0.5, 4.6, 1.1], [1.5, 1.2, 1.1, 4.6]])
    return write_matrix(path, names, sat)


def _input(name: str, tmp: Path) -> Path:
    """The fixture input `name`, written under `tmp` the first time it is needed."""
    path = tmp / "inputs" / name
    if path.exists():
        return path
    if name == "one_class":
        make_class_tree(path, {"cat": ["a.png", "b.png"]})
    elif name == "one_class_eval":  # two class folders, images in one only
        make_class_tree(path, {"cat": ["a.png", "b.png"]})
        (path / "dog").mkdir()
    elif name == "tree":
        make_imagefolder(path)
    elif name == "ckpt7":
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(timm.create_model("test_resnet", num_classes=7).state_dict(), path)
    else:
        raise KeyError(name)
    return path


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """`satlab <args>` in-process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["satlab"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # main() sets it; restored after the test
    capsys.readouterr()
    try:
        cli.main(args)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, fragment: str) -> str:
    """Exit 2 and exactly one non-empty stderr line, `satlab: error: ...` holding `fragment`."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("satlab: error: "), err[-2000:]
    assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args, fragment", BAD_INPUTS, ids=[" ".join(a)[:60] for a, _ in BAD_INPUTS])
def test_bad_input_one_line_exit_2_nothing_written(args, fragment, tmp_path, monkeypatch, capsys):
    args = [a.format(**{k: _input(k, tmp_path) for k in ("one_class", "one_class_eval", "tree", "ckpt7")
                        if "{" + k + "}" in a}) for a in args]
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    code, _, err = run_cli([*BASE, *args, f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}"], monkeypatch, capsys)
    assert_one_line_error(code, err, fragment)
    written = [p for d in (run_dir, cache) if d.exists() for p in d.rglob("*") if p.is_file()]
    assert not written, written


def test_sweep_continues_past_a_failed_job(tmp_path, monkeypatch, capsys):
    matrix = write_tiny_matrix(tmp_path / "m.csv")
    sweep = tmp_path / "sweep"
    code, _, err = run_cli(["-m", "task=analyze", "model_set=timm_tiny", f"analyze.matrix={matrix}", "logger=none",
                            "analyze.importance_seeds=1", "analyze.n_repeats=1", "analyze.n_estimators=5,abc,7",
                            f"hydra.sweep.dir={sweep}"], monkeypatch, capsys)
    assert code == 2, err[-2000:]
    assert (sweep / "0" / "summary.json").is_file() and (sweep / "2" / "summary.json").is_file()
    assert not (sweep / "1" / "summary.json").exists()
    lines = err.strip().splitlines()
    assert "satlab: sweep: 1 of 3 job(s) failed:" in lines
    assert lines[-1] == "  job 1 [analyze.n_estimators=abc]: analyze.n_estimators must be an integer, got 'abc'"
