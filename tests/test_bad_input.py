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
    (["seed=abc"], "seed=abc must be an integer in [0, 4294967295]"),
    (["seed=1.5"], "seed=1.5 must be an integer in [0, 4294967295]"),
    (["seed=-1"], "seed=-1 must be an integer in [0, 4294967295]"),
    (["sat.resume=maybe"], "sat.resume=maybe must be true or false"),
    (["sat.print_table=1"], "sat.print_table=1 must be true or false"),
    (["sat.batch_size=0"], "sat.batch_size=0 must be an integer >= 1"),
    (["sat.num_workers=-1"], "sat.num_workers=-1 must be null (the cores available) or an integer >= 0"),
    (["sat.eps_s=0"], "sat.eps_s=0 must be a number in (0, 100) (a transfer rate in %: it floors the argument of "
                      "the log)"),
    (["sat.eps_s=200"], "sat.eps_s=200 must be a number in (0, 100) (a transfer rate in %"),
    (["sat.n_bootstrap=-1"], "sat.n_bootstrap=-1 must be an integer >= 0 (image resamples for the 95% CIs; 0: no "
                             "CIs)"),
    (["sat.n_bootstrap=1"], "sat.n_bootstrap=1 is too few resamples for a 95% CI; use 0 (no CIs) or >= 100"),
    (["task=ensemble", "ensemble.eps_s=100"], "ensemble.eps_s=100 must be a number in (0, 100)"),
    (["logger.mode=sometimes"], "logger.mode=sometimes is unknown; choose one of offline, online, disabled"),
    (["dataset.eval_noise=2"], "dataset.eval_noise=2 must be a number in [0, 1]"),
    (["model_set.input_size=abc"], "model_set.input_size=abc must be null (timm's data config), dataset or an integer"),
    (["task=analyze", "analyze.n_estimators=1.5"], "analyze.n_estimators=1.5 must be an integer >= 1"),
    (["task=analyze", "analyze.test_size=abc"], "analyze.test_size=abc must be a number"),
    (["task=analyze", "analyze.map=umap"], "analyze.map=umap is unknown; choose one of mds, tsne"),
    (["task=compare", "compare.n_permutations=0"], "compare.n_permutations=0 must be an integer >= 1"),
    (["task=ensemble", "ensemble.ci_level=1"], "ensemble.ci_level=1 must be a number in (0, 1)"),
    (["task=ensemble", "ensemble.team_sizes=[2,2]"], "ensemble.team_sizes lists 2 more than once; give each once"),
    (["task=ensemble", "ensemble.strategies=[random,random]"], "ensemble.strategies lists random more than once"),
    (["task=ensemble", "ensemble.combine=nosuch"], "ensemble.combine=nosuch is unknown; choose one of mean_softmax"),
    (["task=train", "train.mode=nosuch"], "train.mode=nosuch is unknown; choose one of full, head (head = linear probe)"),
    (["task=distill", "distill.alpha=1.5"], "distill.alpha=1.5 must be a number in [0, 1] (the weight of the teacher"),
    (["task=distill", "distill.temperature=0"], "distill.temperature=0 must be a number > 0 (it divides the logits)"),
    (["task=distill", "distill.mode=x"], "distill.mode=x is unknown; choose one of soft, hard"),
    (["task=distill", "distill.student=test_resnet", "distill.teachers=[]"], "distill.teachers=[] lists no teacher; list at least one model, or "
                                              "leave it null for every model of the model set but the student"),
    (["task=distill", "distill.seeds=[0,0]"], "distill.seeds=[0, 0] must be a non-empty list of distinct integers"),
    # the Trainer: typed options, then whatever pytorch_lightning.Trainer refuses on construction
    (["trainer.precision=bogus"], "trainer.precision=bogus is unknown; choose one of"),
    (["trainer.accelerator=quantum"], "trainer.accelerator=quantum is unknown; choose one of auto"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 must be null (each model's recipe) or an integer >= 1"),
    (["+trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1 must be null (no clipping) or a number >= 0"),
    (["trainer.devices=0"], "trainer: `Trainer(devices=0)` value is not a valid input using cpu accelerator"),
    (["+trainer.nosuch=1"], "trainer: Trainer.__init__() got an unexpected keyword argument 'nosuch'"),
    (["+trainer.strategy=nosuch"], "trainer: You selected an invalid strategy name: `strategy='nosuch'`"),
    (["+trainer.val_check_interval=2.5"], "trainer: You have passed invalid value 2.5 for val_check_interval"),
    # training recipes: typed keys, then a trial build of the optimizer, scheduler and loss
    (["task=train", "train.recipe.optimizer.lr=-1"], "train.recipe.optimizer: Invalid learning rate: -1"),
    (["task=train", "+train.recipe.optimizer.betas=[2,0.9]"],
     "train.recipe.optimizer: Invalid beta parameter at index 0: 2"),
    (["task=train", "+train.recipe.optimizer.foo=1"],
     "train.recipe.optimizer: AdamW.__init__() got an unexpected keyword argument 'foo'"),
    (["task=train", "train.recipe.optimizer._target_=torch.optim.Nope"],
     "train.recipe.optimizer: Error loading 'torch.optim.Nope'"),
    (["task=train", "train.recipe.scheduler.pct_start=2"],
     "train.recipe.scheduler: Expected float between 0 and 1 pct_start, but got 2"),
    (["task=train", "train.recipe.loss.label_smoothing=2"],
     "train.recipe.loss: label_smoothing must be between 0.0 and 1.0"),
    (["task=train", "train.recipe.epochs=0"], "train.recipe.epochs=0 must be an integer >= 1"),
    (["task=train", "train.recipe.val_fraction=1"], "train.recipe.val_fraction=1 must be a number in [0, 1)"),
    (["task=train", "train.recipe.scheduler_interval=batch"],
     "train.recipe.scheduler_interval=batch is unknown; choose one of step, epoch"),
    (["task=train", "train.recipe.augment.max_shift=-1"], "train.recipe.augment.max_shift=-1 must be an integer >= 0"),
    (["task=train", "+train.recipe.nosuch=1"], "train.recipe.nosuch is not a recipe key; known: epochs, batch_size"),
    (["task=distill", "distill.recipe.optimizer.weight_decay=-1"],
     "distill.recipe.optimizer: Invalid weight_decay value: -1"),
    (["model_set=digits_zoo", "model_set.train.epochs=0"], "model_set.train.epochs=0 must be an integer >= 1"),
    (["model_set=digits_zoo", "+model_set.catalog.resnet18_s0.train.optimizer.lr=-1"],
     "model_set.catalog.resnet18_s0.train.optimizer: Invalid learning rate: -1"),
    # model sets
    (["model_set.models=[test_resnet,resnet50]"], "model(s) resnet50 not in the catalog of model set 'timm_tiny'"),
    (["model_set.models=[test_resnet,resnet50]"], "set model_set.uncatalogued=random (random init, untrained)"),
    (["model_set.uncatalogued=random", "model_set.models=[test_resnet,resnet5]"], "unknown model 'resnet5'"),
    (["model_set.uncatalogued=maybe"], "model_set.uncatalogued=maybe is unknown; choose one of refuse, random, pretrained"),
    (["model_set.models=[]"], "has 0 model(s); SAT compares pairs"),
    (["model_set.models=[test_resnet]"], "has 1 model(s); SAT compares pairs"),
    (["model_set.models=[test_resnet,test_resnet]"], "lists test_resnet more than once"),
    (["dataset.resolution=30"], "model 'test_vit' cannot take the dataset's 30 x 30 images"),
    (["+model_set.catalog.test_resnet.model_args={drop_rate: 5}"],
     "model 'test_resnet' fails on a blank image at timm's own input size 160 x 160 too (dropout probability has to "
     "be between 0 and 1, but got 5.0), so the cause is how it is built, not the dataset's resolution; check its "
     "model_args (drop_rate=5)"),
    (["+model_set.catalog.test_resnet.checkpoint_path={ckpt7}"],
     "has a head for 7 classes but the model is built for 10 classes (fc.weight (7, 96) vs (10, 96), fc.bias (7,) vs (10,)); "
     "the checkpoint was trained on another dataset"),
    (["+model_set.catalog.test_resnet.checkpoint_path={ckpt_vit}"],
     "does not fit test_resnet: 92 of the model's 92 tensors missing (conv1.0.weight, conv1.1.weight, conv1.1.bias "
     "and 89 more); 80 unexpected (cls_token, pos_embed, patch_embed.proj.weight and 77 more); it was saved from "
     "another architecture or other model_args: point checkpoint_path at a checkpoint of test_resnet"),
    (["model_set=paper69", "model_set.models=[resnet50,vit_small_patch16_224]"],
     "predicts 1000 classes but the dataset has 10"),
    (["model_set=timm", "model_set.models=[vit_base_patch16_224.orig_in21k,test_resnet.r160_in1k]"],
     "model 'vit_base_patch16_224.orig_in21k' (vit_base_patch16_224.orig_in21k): these pretrained weights have no "
     "classifier head (a feature extractor), so the model predicts no class; give it a head for the dataset's 10 "
     "classes and train it (task=train train.mode=head, then model_set.trained_from=<that run>; "
     "model_args.num_classes alone adds an untrained head), or a tag with a head (vit_base_patch16_224.augreg2_in21k"),
    (["model_set=timm", "model_set.pretrained=false", "model_set.models=[test_resnet,test_vti,resnt50]"],
     "unknown model 'test_vti' (not a timm architecture); did you mean test_vit"),
    (["model_set=timm", "model_set.pretrained=false", "model_set.models=[convnext_tiny.fb_in1kk,test_resnet]"],
     "unknown pretrained tag 'fb_in1kk' in model 'convnext_tiny.fb_in1kk'; did you mean convnext_tiny.fb_in1k"),
    (["model_set=timm", "model_set.pretrained=false", "model_set.filter=tset_*"],
     "model_set.filter=tset_* matches no timm model; did you mean test_*?"),
    (["model_set=timm", "model_set.filter=test_mambaout"], "but none has pretrained weights; set model_set.pretrained"),
    (["model_set=timm"], "has 0 model(s); SAT compares pairs, so list at least 2 under model_set.models=[a,b,...] or"),
    # where results and caches go (a folder that cannot be made, a file, an empty value)
    (["paths.output_dir=/proc/satlab-out"], "paths.output_dir '/proc/satlab-out' is not a writable folder (No such "
                                            "file or directory); set paths.output_dir to a writable folder"),
    (["paths.output_dir={afile}"], "afile' is a file, not a folder; set paths.output_dir to a writable folder"),
    (["paths.output_dir=''"], "paths.output_dir='' must be a folder path, not empty (is a shell variable unset?"),
    (["model_set.trained_from={manifest_not_json}"], "trained_models.json' is not a readable manifest (Expecting "
                                                     "value: line 1 column 1 (char 0)); point model_set.trained_from"),
    (["model_set.trained_from={manifest_cut}"], "trained_models.json' is not a readable manifest (Expecting property name"),
    (["model_set.trained_from={manifest_empty}"],
     "is not a task=train manifest (no dataset, num_classes, resolution, models); point model_set.trained_from at "
     "the run dir of a finished task=train run, or rerun task=train"),
    (["model_set.trained_from={manifest_list}"], "is not a task=train manifest (a JSON list, not an object)"),
    # data
    (["dataset=imagefolder"], "dataset.root is required"),
    (["dataset=imagefolder", "dataset.root=/no/such/folder"], "dataset.root '/no/such/folder' is not an existing"),
    (["dataset=imagefolder", "dataset.root={one_class}", "dataset.resize=32", "dataset.resolution=32"],
     "has 1 class(es) (cat); SAT needs at least 2"),
    (["dataset=imagefolder", "dataset.root={one_class_eval}", "dataset.resize=32", "dataset.resolution=32"],
     "are all of one class (cat); SAT needs images of at least 2 classes"),
    (["dataset=imagefolder", "dataset.root={tree}", "dataset.resize=16", "dataset.resolution=32"],
     "dataset.resize (16) must be >= dataset.resolution (32)"),
    (["dataset.samples_per_class=0"], "dataset.samples_per_class=0 must be null (all images) or an integer >= 1"),
    (["dataset=torchvision"], "dataset.root is required for dataset=torchvision: add dataset.root=..."),
    (["dataset=torchvision", "dataset.root={empty}"], "dataset=torchvision needs the class: add dataset.name="),
    (["dataset=torchvision", "dataset.name=FashionMnist", "dataset.root={empty}"],
     "dataset.name=FashionMnist is not a torchvision dataset class; did you mean FashionMNIST?"),
    (["dataset=torchvision", "dataset.name=FashionMNIST", "dataset.root=/no/such/folder"],
     "dataset.root '/no/such/folder' is not an existing directory; set it to the folder holding FashionMNIST's files"),
    (["dataset=torchvision", "dataset.name=FashionMNIST", "dataset.root={empty}"],
     "no FashionMNIST test files under"),
    (["dataset=torchvision", "dataset.name=FashionMNIST", "dataset.root={empty}", "dataset.download=maybe"],
     "dataset.download=maybe must be true or false (true lets torchvision download missing files"),
    # attacks (built once on trial; their fields are checked by satlab.attacks.gradient.ATTACK): every budget is > 0
    (["attack.eps=-0.1"], "attack.eps=-0.1 must be a number in (0, 1] (L-inf, in pixel units: 8/255 = 0.0314)"),
    (["attack.eps=0"], "attack.eps=0 must be a number in (0, 1] (L-inf"),
    (["attack=fgsm", "attack.eps=0"], "attack.eps=0 must be a number in (0, 1] (L-inf"),
    (["attack=pgd_l2", "attack.eps=0"], "attack.eps=0 must be a number > 0 (the L2 norm over all 3xHxW values"),
    (["attack=pgd_l2", "attack.eps=100"], "attack.eps=100 is larger than the L2 distance between any two 32x32"),
    (["attack.eps=0.001"], "attack.eps=0.001 is less than half an 8-bit level"),
    (["attack.steps=0"], "attack.steps=0 must be an integer >= 1"),
    (["attack.loss=marign"], "attack.loss=marign is unknown; choose one of ce, margin; did you mean margin?"),
    # tiles of a map and the engine's memory budget (satlab.sat.schedule)
    (["sat.tiles=2x2", "sat.assemble=true"], "4 of 4 tile(s) are not in the cache: sat.tile=0,1,2,3 "),
    (["sat.tiles=2x2"], "sat.tile=null: say which of the 4 tiles this job computes"),
    (["sat.tiles=2x2", "sat.tile=4"], "0 <= sat.tile < 4 (a sweep: sat.tile=range(4))"),
    (["sat.tile=1"], "sat.tile=1 needs sat.tiles (e.g. sat.tiles=2x2 sat.tile=0)"),
    (["sat.tiles=[{sources:all,targets:all},{sources:[test_vit],targets:all}]", "sat.tile=0"],
     "sat.tiles overlap: tiles 0 and 1 both hold the pair test_vit -> test_convnext"),
    (["sat.tiles=[{sources:[test_vit],targets:all}]", "sat.tile=0"],
     "sat.tiles leave 12 pair(s) of the map in no tile (test_resnet -> test_resnet"),
    (["sat.tiles=2x2", "sat.tile=0", "sat.resume=false"], "meet in the records cache: set sat.resume=true"),
    (["sat.status=true"], "sat.status=true shows the tiles of a tiled map: give the sat.tiles of its sweep"),
    (["sat.tiles=2x2", "sat.tile=0", "sat.status=true"], "without sat.tile, sat.shard or sat.assemble"),
    (["sat.memory_budget=0"], "sat.memory_budget=0: phase 2 needs at least one model resident"),
    (["sat.memory_budget=0.5MiB"], "sat.memory_budget=0.5MiB is smaller than model 'test_resnet'"),
    (["sat.memory_budget=lots"], "sat.memory_budget=lots: use auto, a number of models (e.g. 4) or a size"),
    (["sat.precision=0"], "sat.precision=0 must be null (every pair on every image) or a number > 0 (the 95% "
                          "half-width of each pair's SAT in ln units, e.g. 0.15)"),
    (["sat.precision=-0.1"], "sat.precision=-0.1 must be null (every pair on every image) or a number > 0"),
    (["sat.precision=tight"], "sat.precision=tight must be null (every pair on every image) or a number > 0"),
    (["sat.precision=1e-4"], "sat.precision=0.0001: no pair can reach it on 20 image(s) (even a pair fooled both "
                             "ways on every image has a half-width of 0.0459); give sat.precision >= 0.046 or more "
                             "images (dataset.samples_per_class)"),
    (["sat.first_round=0"], "sat.first_round=0 must be an integer >= 1"),
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
    elif name == "afile":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    elif name == "empty":
        path.mkdir(parents=True)
    elif name.startswith("manifest_"):  # a task=train run folder whose trained_models.json is damaged
        path.mkdir(parents=True)
        whole = '{"dataset": "digits", "num_classes": 10, "resolution": 32, "mode": "full", "models": {}}'
        text = {"manifest_not_json": "not json", "manifest_cut": whole[:40], "manifest_empty": "{}",
                "manifest_list": "[]"}[name]
        (path / "trained_models.json").write_text(text)
    elif name == "ckpt7":
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(timm.create_model("test_resnet", num_classes=7).state_dict(), path)
    elif name == "ckpt_vit":  # a checkpoint of another architecture
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(timm.create_model("test_vit", num_classes=10).state_dict(), path)
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
    names = ("one_class", "one_class_eval", "tree", "ckpt7", "ckpt_vit", "empty", "afile", "manifest_not_json", "manifest_cut",
             "manifest_empty", "manifest_list")
    args = [a.format(**{k: _input(k, tmp_path) for k in names if "{" + k + "}" in a})
            if any("{" + k + "}" in a for k in names) else a for a in args]
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
    assert lines[-1] == "  job 1 [analyze.n_estimators=abc]: analyze.n_estimators=abc must be an integer >= 1"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there: trainer.accelerator=gpu is valid")
def test_gpu_accelerator_without_a_gpu(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["model_set=timm_tiny", "trainer.accelerator=gpu", f"hydra.run.dir={run_dir}",
                            f"paths.cache_dir={tmp_path / 'cache'}"], monkeypatch, capsys)
    assert_one_line_error(code, err, "trainer: No supported gpu backend found!")
    assert not run_dir.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_unwritable_run_folder(mode, tmp_path, monkeypatch, capsys):
    """A run folder Hydra cannot create (under a file; /proc) is one line naming it and the option to set."""
    (tmp_path / "afile").write_text("")
    key = f"hydra.{mode}.dir"
    for folder, reason in ((tmp_path / "afile" / "run", "Not a directory"), ("/proc/nope", "No such file")):
        args = ["-m"] if mode == "sweep" else []
        code, _, err = run_cli([*args, "model_set=timm_tiny", f"{key}={folder}"], monkeypatch, capsys)
        assert_one_line_error(code, err, f"cannot create the run folder '{folder}' ({reason}")
        assert err.strip().endswith(f"; set {key}=<a writable folder>"), err
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_config_dir_file_not_yaml(tmp_path, monkeypatch, capsys):
    """A group file of one's own (--config-dir) that is not valid YAML: the file, line and column in one line."""
    (tmp_path / "conf" / "model_set").mkdir(parents=True)
    broken = tmp_path / "conf" / "model_set" / "broken.yaml"
    broken.write_text("models: [a, b\nfoo: : x\n")
    code, _, err = run_cli(["--config-dir", str(tmp_path / "conf"), "model_set=broken",
                            f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert_one_line_error(code, err, f"config file '{broken}' line 2, column 4 is not valid YAML (while parsing a "
                                     "flow sequence: expected ',' or ']', but got ':'); fix that file")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("how", ["override", "environment"])
def test_empty_cache_dir(how, tmp_path, monkeypatch, capsys):
    """paths.cache_dir='' (typed, or SATLAB_CACHE_DIR set to nothing) is refused: it would put records/ and zoo/
    into the current folder without a word."""
    monkeypatch.chdir(tmp_path)
    args = ["paths.cache_dir=''"] if how == "override" else []
    monkeypatch.setenv("SATLAB_CACHE_DIR", "")
    code, _, err = run_cli([*BASE, *args, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert_one_line_error(code, err, "paths.cache_dir='' must be a folder path, not empty (is a shell variable "
                                     "unset? the default is $SATLAB_CACHE_DIR, else ~/.cache/satlab)")
    assert list(tmp_path.iterdir()) == []


def test_offline_missing_pretrained_weights_one_line(tmp_path, monkeypatch, capsys, tiny_imagenet):
    """HF_HUB_OFFLINE and an empty Hugging Face cache: every missing model in the one line, at once (timm would
    retry on the first model and name only it); the paper's 68 models the same way."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    common = [f"dataset.root={tiny_imagenet}", "dataset.samples_per_class=1", "trainer.accelerator=cpu",
              f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    code, _, err = run_cli(["model_set=timm", "dataset=imagenet", "model_set.filter=test_*", *common],
                           monkeypatch, capsys)
    line = assert_one_line_error(code, err, "pretrained weights of 13 model(s) are not in the local cache and "
                                            "HF_HUB_OFFLINE is set: test_byobnet.r160_in1k (hf-hub:timm/")
    assert " and 3 more; fetch them on a machine with internet" in line
    code, _, err = run_cli(["experiment=paper69_imagenet", *common], monkeypatch, capsys)
    assert_one_line_error(code, err, "pretrained weights of 68 model(s) are not in the local cache and HF_HUB_OFFLINE "
                                     "is set: nfnet_l0 (hf-hub:timm/nfnet_l0.ra2_in1k), ")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_samples_per_class_above_what_the_folder_has_is_said(tmp_path, monkeypatch, capsys):
    """dataset.samples_per_class=50 on a folder of 4, 3 and 2 images per class runs (every image is used) and says
    so, on the console and in summary.json; the advice on empty X_AB does not suggest raising samples_per_class."""
    import json

    root = make_imagefolder(tmp_path / "tree")
    run_dir = tmp_path / "run"
    code, out, err = run_cli(["model_set=timm_tiny", "dataset=imagefolder", f"dataset.root={root}", "dataset.resize=32",
                              "dataset.resolution=32", "dataset.samples_per_class=50", "attack=fgsm", "logger=none",
                              "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "sat.n_bootstrap=0",
                              f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}"], monkeypatch, capsys)
    assert code == 0, err[-2000:]
    note = ("dataset.samples_per_class=50 but 3 of 3 class(es) have fewer evaluation images (cat 4, dog 3, fish 2): "
            "the run uses 9 images, not 150; raising samples_per_class adds none, more images in the dataset do")
    assert note in out + err
    assert json.loads((run_dir / "summary.json").read_text())["dataset_notes"] == [note]
    assert "more images (dataset.samples_per_class)" not in out + err
    empty = [ln for ln in (out + err).splitlines() if "(empty X_AB)" in ln]  # untrained models: some pairs have none
    assert empty and all("more images in the dataset (raising dataset.samples_per_class adds none)" in ln
                         for ln in empty), empty


def _fails_inside(**_: object) -> None:
    """A dataset function with a bug: it raises inside (not at the call), as a real defect would."""
    raise ZeroDivisionError("a bug, not bad input")


def test_a_bug_inside_a_dataset_stays_a_traceback(tmp_path):
    """Only the config's faults become `dataset: ...` (a _target_ that cannot be found, arguments it does not
    take) and what the dataset raises as SatlabError; any other exception raised inside it propagates as is."""
    from omegaconf import OmegaConf

    from satlab.tasks.common import build
    from satlab.utils import SatlabError

    with pytest.raises(ZeroDivisionError, match="a bug, not bad input"):
        build(OmegaConf.create({"dataset": {"_target_": "test_bad_input._fails_inside", "root": "x"}}), "dataset")
    with pytest.raises(SatlabError, match=r"^dataset: _fails_inside\(\) takes 0 positional arguments but 1 was"):
        build(OmegaConf.create({"dataset": {"_target_": "test_bad_input._fails_inside", "_args_": [1]}}), "dataset")
    with pytest.raises(SatlabError, match=r"^dataset: Error loading 'nosuch\.fn'"):
        build(OmegaConf.create({"dataset": {"_target_": "nosuch.fn"}}), "dataset")
