"""The model set: models built one at a time when asked, content keys known without building stored models, every
model checked (and every missing pretrained download named) before any is built, model_set=timm and the
docs' own model set run tiny, the layering of the packages (models/ never imports the training layer; no import
circle)."""

from __future__ import annotations

import ast
import logging
import re
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch

from satlab.data.common import balanced_subset
from satlab.data.digits import digits
from satlab.models import ModelSet, ModelSpec, TimmSource
from satlab.models import hub
from satlab.models.specs import model_specs
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


def test_a_block_lets_its_models_go_together_and_trims_the_heap_once(monkeypatch):
    import weakref

    from satlab.models import model_set

    trims = []
    monkeypatch.setattr(model_set, "release_freed_memory", lambda: trims.append(1))
    specs = [ModelSpec(n, n, input_size="dataset") for n in ("test_resnet", "test_convnext", "test_vit")]
    models = ModelSet([TimmSource(s, 10, 32, seed=0) for s in specs])
    with models.use_block([0, 2]) as nets:
        assert [type(n.model).__name__ for n in nets] == ["ResNet", "VisionTransformer"]
        alive = [weakref.ref(n) for n in nets]
    assert all(a() is None for a in alive) and not nets and trims == [1]  # freed, one trim for the block
    with models.use(1) as model:
        one = weakref.ref(model)
        del model
    assert one() is None and trims == [1, 1]
    mine = models.load(0)
    ready = ModelSet.from_models(["mine"], [mine])
    with ready.use(0) as model:
        assert model is mine
    assert trims == [1, 1]  # a model the caller built stays the caller's: nothing freed, no trim


def test_a_duplicate_or_mismatched_model_is_an_error():
    spec = ModelSpec("a", "test_resnet", input_size="dataset")
    with pytest.raises(SatlabError, match="more than once"):
        ModelSet([TimmSource(spec, 10, 32), TimmSource(spec, 10, 32)])
    models = ModelSet([TimmSource(spec, 10, 32, seed=0)])
    models._keys[0] = "0" * 16  # as if a manifest or cache recorded other weights under this name
    with pytest.raises(SatlabError, match="do not match the key stored"):
        models.load(0)


def test_zoo_keys_are_read_from_the_cache_without_loading(tmp_path, one_thread, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Lightning's default logger writes lightning_logs/ into the cwd
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


# --- checks before anything is built: every failing model, every missing pretrained download ----------------------


def test_check_names_every_failing_model():
    names = ("test_vti", "test_resnet", "resnt50")
    sources = [TimmSource(ModelSpec(n, n, input_size="dataset"), 10, 32) for n in names]
    with pytest.raises(SatlabError, match=r"^unknown model 'test_vti' \(not a timm architecture\); did you mean "
                                          r"test_vit.*\(1 more model\(s\) fail their checks too: resnt50\)$"):
        ModelSet(sources).check()


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Empty Hugging Face and torch hub caches; HF_HUB_OFFLINE is read on import, so the constant is patched."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch"))

    def no_network(*args, **kwargs):
        raise AssertionError("the check must not touch the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    return tmp_path


def cache_hub_file(root: Path, repo: str, filename: str) -> None:
    """`filename` of hub repo `repo` as huggingface_hub caches it (refs/main -> snapshots/<commit>/<file>)."""
    folder = root / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True, exist_ok=True)
    (folder / "snapshots" / ("0" * 40) / filename).write_bytes(b"weights")


def test_offline_every_missing_pretrained_model_in_one_error(empty_caches):
    """13 pretrained test_* models, none cached, HF_HUB_OFFLINE: one error names them (10 and a count), in well
    under a second, without a network call (timm would retry on the first one, then name only it)."""
    specs = model_specs({"name": "timm", "filter": "test_*", "pretrained": True, "uncatalogued": "timm"})
    models = ModelSet([TimmSource(s, 1000, 160) for s in specs])
    start = time.perf_counter()
    with pytest.raises(SatlabError) as err:
        models.check()
    assert time.perf_counter() - start < 2
    message = str(err.value)
    assert message.startswith("pretrained weights of 13 model(s) are not in the local cache and HF_HUB_OFFLINE is "
                              "set: test_byobnet.r160_in1k (hf-hub:timm/test_byobnet.r160_in1k), ")
    assert message.count("(hf-hub:timm/") == 10 and " and 3 more; fetch them on a machine with internet" in message
    assert str(empty_caches / "hf" / "hub") in message and "checkpoint_path" in message


def test_cached_weights_are_not_downloads(empty_caches):
    """timm's file order on the hub (safetensors, else pytorch_model.bin); a plain url in torch hub's cache."""
    cache_hub_file(empty_caches, "timm/test_resnet.r160_in1k", "model.safetensors")
    cache_hub_file(empty_caches, "timm/test_vit.r160_in1k", "pytorch_model.bin")
    specs = [ModelSpec(n, n, pretrained=True) for n in ("test_resnet", "test_vit.r160_in1k", "test_convnext")]
    assert [hub.pending_download(s) for s in specs[:2]] == [None, None]
    assert hub.pending_download(specs[2]).where == "hf-hub:timm/test_convnext.r160_in1k"
    assert hub.pending_download(replace(specs[2], pretrained=False)) is None
    url = "https://example.org/w/tiny-0123abcd.pth"
    spec = ModelSpec("u", "test_resnet", pretrained=True,
                     model_args={"pretrained_cfg_overlay": {"url": url, "hf_hub_id": None}})
    missing = hub.pending_download(spec)
    torch_cache = str(empty_caches / "torch" / "checkpoints")
    assert (missing.where, missing.host, missing.cache) == (url, "example.org", torch_cache)
    (empty_caches / "torch" / "checkpoints").mkdir(parents=True)
    (empty_caches / "torch" / "checkpoints" / "tiny-0123abcd.pth").write_bytes(b"weights")
    assert hub.pending_download(spec) is None
    ModelSet([TimmSource(s, 1000, 160) for s in specs[:2]]).check()  # all cached: offline is fine


def test_online_downloads_probe_each_host_once(empty_caches, monkeypatch, caplog):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    downloads = [hub.Download(n, f"hf-hub:timm/{n}", "huggingface.co", "/c") for n in ("a", "b")]
    asked = []
    with pytest.raises(SatlabError, match=r"of 2 model\(s\) are not in the local cache and huggingface.co cannot "
                                          r"be reached \(Name or service not known\): a \(hf-hub:timm/a\), b "):
        hub.check_downloads(downloads, probe=lambda h: asked.append(h) or "Name or service not known")
    assert asked == ["huggingface.co"]
    with caplog.at_level(logging.INFO, logger="satlab.models.hub"):
        hub.check_downloads(downloads, probe=lambda h: None)
    assert "2 model(s) will download pretrained weights (a, b) into /c" in caplog.text


# --- model_set=timm and the docs' own model set, run tiny on the CLI ----------------------------------------------


def run_ok(args: list[str], tmp_path: Path, monkeypatch, capsys, name: str = "run") -> Path:
    """`satlab <args> ...tiny settings` in-process in `tmp_path`; its run folder `name` (asserting exit status 0)."""
    from test_bad_input import run_cli

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / name
    code, out, err = run_cli([*args, "dataset.samples_per_class=2", "attack=fgsm", "logger=none",
                              "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                              f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}"], monkeypatch, capsys)
    assert code == 0, (out + err)[-3000:]
    return run_dir


def families(run_dir: Path) -> dict[str, str]:
    rows = (run_dir / "models.csv").read_text().splitlines()[1:]
    return {row.split(",")[0]: row.split(",")[1] for row in rows}


def test_timm_model_set_runs_offline(tmp_path, monkeypatch, capsys, one_thread):
    """The issue's commands: timm names, and a filter, random init (no weights to download)."""
    named = run_ok(["model_set=timm", "model_set.models=[test_resnet,test_vit]", "model_set.pretrained=false"],
                   tmp_path, monkeypatch, capsys)
    assert families(named) == {"test_resnet": "CNN", "test_vit": "Transformer"}
    filtered = run_ok(["model_set=timm", "model_set.filter=test_conv*", "model_set.exclude=*3",
                       "model_set.pretrained=false", "model_set.input_size=dataset"], tmp_path, monkeypatch, capsys,
                      name="run_filter")
    assert families(filtered) == {"test_convnext": "CNN", "test_convnext2": "CNN"}


def test_docs_model_set_example_runs(tmp_path, monkeypatch, capsys, one_thread):
    """docs/models.md's model set of one's own is docs/examples/model_set/my_models.yaml, and it runs."""
    example = ROOT / "docs" / "examples" / "model_set" / "my_models.yaml"
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "models.md").read_text(), flags=re.S)
    assert example.read_text() in blocks  # the page shows the file as it is
    (tmp_path / "checkpoints").mkdir()
    weights = timm.create_model("test_resnet", num_classes=10).state_dict()
    torch.save(weights, tmp_path / "checkpoints" / "my_resnet.pth")
    run_dir = run_ok(["--config-dir", str(example.parents[1]), "model_set=my_models"], tmp_path, monkeypatch, capsys)
    assert families(run_dir) == {"my_resnet": "CNN", "my_vit": "Transformer", "test_convnext": "CNN"}
    header = (run_dir / "models.csv").read_text().splitlines()[0]
    assert "normalization" in header  # the catalog's components reach models.csv
