"""The worked examples of docs/extending.md run: a dataset, a model set, an attack, a task and a preset of one's own,
from docs/examples/ (added with --config-dir, imported from the Python path), and the page shows them as they are."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from satlab import attacks
from satlab.data import data_fingerprint
from satlab.sat.records import read_matrix
from satlab.tasks.checks import check_config
from satlab.tasks.common import build
from test_bad_input import assert_one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
EXAMPLES_CONF = EXAMPLES / "conf"
PAGE = ROOT / "docs" / "extending.md"
SMALL = ["dataset.train_per_class=8", "dataset.test_per_class=10", "model_set.train.epochs=1",
         "model_set.train.batch_size=12", "attack.steps=2", "sat.resume=false",
         "sat.n_bootstrap=0", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]


@pytest.fixture
def examples(monkeypatch):
    """docs/examples on the Python path; afterwards the attack registry and the imported examples are put back, so
    no other test sees the example attack."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    saved = dict(attacks._REGISTRY)
    yield
    attacks._REGISTRY.clear()
    attacks._REGISTRY.update(saved)
    for name in [m for m in sys.modules if m == "satlab_examples" or m.startswith("satlab_examples.")]:
        del sys.modules[name]


def compose_examples(overrides, tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"hydra.searchpath=[file://{EXAMPLES_CONF}]", "logger=none",
                                            f"paths.output_dir={tmp_path / 'out'}",
                                            f"paths.cache_dir={tmp_path / 'cache'}", *overrides])


def test_dataset_example(examples, tmp_path):
    cfg = compose_examples(["dataset=stripes", "model_set=timm_tiny"], tmp_path)
    check_config(cfg)
    data = build(cfg, "dataset")
    assert (data.name, data.num_classes, data.resolution) == ("stripes", 3, 32)
    assert data.class_names == ["horizontal", "vertical", "diagonal"]
    assert (len(data.train), len(data.eval)) == (150, 60)
    image, label, sample_id = data.eval[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 3
    assert np.array_equal(image * 255, (image * 255).round())  # on 8-bit levels
    ids = [data.train[i][2] for i in range(len(data.train))] + [data.eval[i][2] for i in range(len(data.eval))]
    assert len(set(ids)) == len(ids) and sample_id in ids  # stable, never shared between the splits
    assert data_fingerprint(data.eval) == data_fingerprint(build(cfg, "dataset").eval)  # deterministic
    fewer = build(compose_examples(["dataset=stripes", "dataset.samples_per_class=4"], tmp_path), "dataset")
    assert len(fewer.eval) == 12


def test_attack_example(examples, tmp_path):
    cfg = compose_examples(["attack=bim"], tmp_path)
    attack = instantiate(cfg.attack)  # imports satlab_examples.bim, which registers the name
    assert "bim" in attacks.list_attacks()
    assert (attack.name, attack.norm, attack.random_start, attack.steps) == ("bim", "linf", False, 10)
    assert attack.eps == 32 / 255 and attack.alpha == pytest.approx(8 / 255)
    pgd = attacks.create_attack("pgd_linf", eps=32 / 255, random_start=False)
    assert {k: v for k, v in attack.describe().items() if k != "name"} == {
        k: v for k, v in pgd.describe().items() if k != "name"}  # PGD-L-inf without the random start
    check_config(cfg)


@pytest.mark.filterwarnings("ignore:.*empty X_AB:RuntimeWarning")
def test_model_set_attack_and_task_examples_end_to_end(examples, tmp_path, monkeypatch, capsys):
    """The preset (stripes + tiny_trio + bim) trains the trio and computes its map; the task reads that map."""
    monkeypatch.chdir(tmp_path)
    run_dir, cache = tmp_path / "sat", tmp_path / "cache"
    code, out, err = run_cli(["--config-dir", str(EXAMPLES_CONF), "experiment=stripes_trio", *SMALL,
                              f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}"], monkeypatch, capsys)
    assert code == 0, err[-3000:]
    names, sat = read_matrix(run_dir / "sat_matrix.csv")
    assert names == ["small_resnet", "small_vit", "small_convnext"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["attack"]["name"] == "bim" and summary["attack"]["random_start"] is False
    assert sorted(summary["zoo"]) == sorted(names)  # trained by satlab on the stripes
    families = pd.read_csv(run_dir / "models.csv").set_index("model")["family"]
    assert families.to_dict() == {"small_resnet": "CNN", "small_vit": "Transformer", "small_convnext": "CNN"}

    task_dir = tmp_path / "top"
    code, out, err = run_cli(["--config-dir", str(EXAMPLES_CONF), "task=top_pairs", f"top_pairs.matrix={run_dir}",
                              "top_pairs.k=2", "logger=none", f"hydra.run.dir={task_dir}"], monkeypatch, capsys)
    assert code == 0, err[-3000:]
    top = pd.read_csv(task_dir / "top_pairs.csv")
    pairs = sorted(((sat[i, j], names[i], names[j]) for i in range(3) for j in range(i + 1, 3)
                    if np.isfinite(sat[i, j])), key=lambda p: -p[0])
    assert pairs, sat  # at least one pair has jointly correct images
    assert len(top) == min(2, len(pairs)) and list(top["sat"]) == pytest.approx([p[0] for p in pairs[:2]])
    assert list(top["transfer_percent"]) == pytest.approx([math.exp(v) for v in top["sat"]])
    assert json.loads((task_dir / "summary.json").read_text())["task"] == "top_pairs"
    assert f"results in {task_dir}" in out


def test_task_module_errors_are_one_line(examples, tmp_path, monkeypatch, capsys):
    base = ["--config-dir", str(EXAMPLES_CONF), "task=top_pairs", "logger=none"]
    code, _, err = run_cli([*base, "task.module=nosuch.mod", f"hydra.run.dir={tmp_path / 'a'}"], monkeypatch, capsys)
    assert_one_line_error(code, err, "task.module=nosuch.mod cannot be imported (No module named 'nosuch')")
    code, _, err = run_cli([*base, "task.module=satlab_examples", f"hydra.run.dir={tmp_path / 'b'}"], monkeypatch,
                           capsys)
    assert_one_line_error(code, err, "task.module=satlab_examples has no run(cfg) function")
    code, _, err = run_cli([*base, "top_pairs.k=0", f"hydra.run.dir={tmp_path / 'c'}"], monkeypatch, capsys)
    assert_one_line_error(code, err, "top_pairs.k=0 must be an integer >= 1")
    assert not any((tmp_path / d).exists() and any((tmp_path / d).iterdir()) for d in "abc")


@pytest.mark.parametrize("source, fragment", [
    ("def run(cfg:\n    pass\n", "fails on import: SyntaxError: '(' was never closed (satlab_bad_mod.py, line 1); "
                                  "fix the module"),
    ("raise RuntimeError('boom')\n", "fails on import: RuntimeError: boom; fix the module"),
    ("import satlab_no_such_dependency\n", "fails on import: ModuleNotFoundError: No module named "
                                            "'satlab_no_such_dependency'; install what it imports"),
])
def test_task_module_failing_on_import_is_one_line(source, fragment, examples, tmp_path, monkeypatch, capsys):
    """Any exception while the module is imported (not only ImportError) is one line naming the module and the
    error; a missing dependency of the module is not mistaken for the module itself being off the path."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "satlab_bad_mod.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.delitem(sys.modules, "satlab_bad_mod", raising=False)
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["--config-dir", str(EXAMPLES_CONF), "task=top_pairs", "logger=none",
                            "task.module=satlab_bad_mod", f"hydra.run.dir={run_dir}"], monkeypatch, capsys)
    assert_one_line_error(code, err, f"task.module=satlab_bad_mod {fragment}")
    assert not run_dir.exists()


def _strip(line: str) -> str:
    return re.sub(r"\s+#.*$", "", line).rstrip()


def _blocks(language: str) -> list[list[str]]:
    blocks, current = [], None
    for line in PAGE.read_text().splitlines():
        if current is None and line.strip() == f"```{language}":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(_strip(line))
    return blocks


def _contains_in_order(needles: list[str], haystack: list[str]) -> bool:
    rest = iter(haystack)
    return all(any(n == h for h in rest) for n in needles if n.strip())


@pytest.mark.parametrize("language, folder", [("yaml", EXAMPLES_CONF), ("python", EXAMPLES / "satlab_examples")])
def test_the_page_shows_the_examples_as_they_are(language, folder):
    """Each yaml / python excerpt of docs/extending.md is, line by line in order, in one example file (an excerpt
    with `...` shows the lines around the elision); the in-tree registry snippet is the one excerpt left out."""
    suffix = "yaml" if language == "yaml" else "py"
    files = [[_strip(ln) for ln in p.read_text().splitlines()] for p in folder.rglob(f"*.{suffix}")]
    for block in _blocks(language):
        if any("_REGISTRY: dict" in line for line in block):
            continue  # the line to add inside satlab/attacks/__init__.py
        parts = [[ln for ln in part.splitlines() if ln.strip()] for part in "\n".join(block).split("...")]
        assert any(all(_contains_in_order(part, f) for part in parts) for f in files), "\n".join(block)
