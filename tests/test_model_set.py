"""The model set: models built one at a time when asked, content keys known without building stored models, the
layering of the packages (models/ never imports the training layer; no import circle)."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from satlab.data.common import balanced_subset
from satlab.data.digits import digits
from satlab.models import ModelSet, ModelSpec, TimmSource
from satlab.train import open_model_set
from satlab.train.zoo import ZooSource
from satlab.utils import SatlabError

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"accelerator": "cpu", "enable_progress_bar": False}


class Counting(TimmSource):
    """A timm source that counts how often its model is built."""

    built = 0

    def load(self):
        Counting.built += 1
        return super().load()


def test_models_are_built_when_asked_and_keys_once():
    specs = [ModelSpec(n, n, input_size="dataset") for n in ("test_resnet", "test_convnext", "test_vit")]
    Counting.built = 0
    models = ModelSet([Counting(s, 10, 32, seed=0) for s in specs])
    models.check()
    assert Counting.built == 0 and models.names == ["test_resnet", "test_convnext", "test_vit"]
    key = models.key(1)  # computed from the built model, which is kept for the next use
    assert Counting.built == 1
    with models.use(1) as model:
        assert Counting.built == 1 and model.fingerprint() == key and not model.training
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert models.key(1) == key and Counting.built == 1  # the key is remembered
    with models.use(1):
        assert Counting.built == 2  # released after the block: built again when asked again
    assert models.keys()[1] == key and Counting.built == 4  # the two other keys built one model each


def test_a_duplicate_or_mismatched_model_is_an_error():
    spec = ModelSpec("a", "test_resnet", input_size="dataset")
    with pytest.raises(SatlabError, match="more than once"):
        ModelSet([TimmSource(spec, 10, 32), TimmSource(spec, 10, 32)])
    models = ModelSet([TimmSource(spec, 10, 32, seed=0)])
    models._keys[0] = "0" * 16  # as if a manifest or cache recorded other weights under this name
    with pytest.raises(SatlabError, match="do not match the key stored"):
        models.load(0)


def test_zoo_keys_are_read_from_the_cache_without_loading(tmp_path, one_thread):
    full = digits(samples_per_class=2)
    data = replace(full, train=balanced_subset(full.train, 6))
    spec = ModelSpec("tiny", "test_resnet", train_seed=0, input_size="dataset")
    recipe = {"epochs": 1, "batch_size": 16}
    first = ModelSet([ZooSource(spec, data, recipe, tmp_path, QUIET)])
    assert first.sources[0].stored_key() is None  # nothing cached yet: the key needs training
    trained_key = first.key(0)  # trains and caches
    loads = []
    source = ZooSource(spec, data, recipe, tmp_path, QUIET)
    source.load = lambda: loads.append(1)  # type: ignore[method-assign]
    again = ModelSet([source])
    assert again.key(0) == trained_key and not loads  # read beside the cached weights, no model loaded


def test_open_model_set_picks_each_source(tmp_path):
    data = digits(samples_per_class=1)
    zoo = {"name": "z", "models": ["resnet18_s0", "test_vit"], "uncatalogued": "random", "train": {"epochs": 1},
           "catalog": {"resnet18_s0": {"timm_name": "test_resnet", "train_seed": 0}}}
    models = open_model_set(zoo, data, seed=0, cache_dir=tmp_path)
    assert [type(s).__name__ for s in models.sources] == ["ZooSource", "TimmSource"]
    assert models.specs[0].input_size == "dataset"  # a zoo model takes the dataset's resolution by default
    with pytest.raises(SatlabError, match="not found"):
        open_model_set({**zoo, "trained_from": str(tmp_path / "nowhere")}, data, seed=0, cache_dir=tmp_path)


def imports_of(path: Path) -> set[str]:
    """The satlab modules a file imports (at any depth in the file: lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("satlab"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("satlab"))
    return found


def test_layering_and_no_import_circles():
    """Data flows one way: models/, data/, attacks/ and sat/ import nothing from train/ or tasks/; no two modules
    import each other, directly or through others (the graph of module-level imports has no cycle)."""
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (ROOT / "satlab").rglob("*.py") if "conf" not in p.parts}
    graph = {mod: {m for m in imports_of(path) if m in files and m != mod} for mod, path in files.items()}
    for mod, deps in graph.items():
        if mod.split(".")[1:2] and mod.split(".")[1] in ("models", "data", "attacks", "sat"):
            upward = {d for d in deps if d.split(".")[1:2] and d.split(".")[1] in ("train", "tasks", "cli")}
            assert not upward, f"{mod} imports {sorted(upward)} (an arrow up the data flow)"
    # cycles: depth-first search over module -> imported module (package __init__ re-exports count as edges)
    state: dict[str, int] = {}

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for dep in graph[mod]:
            if state.get(dep) == 1:
                raise AssertionError(f"import circle: {' -> '.join(path[path.index(dep):] + [dep])}")
            if dep not in state:
                visit(dep, path + [dep])
        state[mod] = 2

    for mod in graph:
        if mod not in state:
            visit(mod, [mod])
