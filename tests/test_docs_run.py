"""The README's commands run: each README command that runs on a fresh clone offline is RUN, in this process, as
written plus only the shrinking overrides stated in `RUNS`, and must exit 0 and write its results. The commands
marked `# needs: ...` are checked by tests/test_docs_needs.py; a README command in neither fails here.

The commands share one working folder (outputs/ and multirun/ land there, so `task=analyze` finds the newest map)
and one cache for the module, so the digits zoo is trained once, on 7 images per class for one epoch (`DIGITS`):
the tests check that each command runs to its results, never what training reaches.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_docs import COMMANDS

README = "README.md"

FAST = ["logger=none", "trainer.enable_progress_bar=false"]
# the digits zoo in seconds: 7 training images per class (70, one batch), one epoch; 10 eval images, one attack
# step, no bootstrap CIs
DIGITS = [*FAST, "dataset.train_per_class=7", "model_set.train.epochs=1", "dataset.samples_per_class=1",
          "attack.steps=1"]
ZOO = [*DIGITS, "sat.n_bootstrap=0"]
# every README command that runs offline -> the overrides that shrink it here (stated, nothing else changes)
RUNS = {
    "": ZOO,
    "experiment=smoke": [*FAST, "dataset.train_per_class=10"],  # tests/test_cli.py runs it as written
    "experiment=smoke sat.precision=0.5 sat.first_round=10": [*FAST, "dataset.train_per_class=10"],
    "model_set.models=[resnet18_s0,vit_tiny_p8,mixer_p4]": ZOO,
    "attack=mifgsm attack.eps=0.0627451": ZOO,
    "--help": [],
    "--cfg job": [],
    "model_set=timm model_set.pretrained=false model_set.models=[resnet18,convnext_atto,mobilenetv3_small_050] "
    "model_set.input_size=dataset":
        [*FAST, "dataset.samples_per_class=1", "attack.steps=1", "sat.n_bootstrap=0"],
    "-m attack.eps=0.0627451,0.1254902,0.2509804": ZOO,
    "task=analyze": FAST,
    "experiment=ensemble_digits": [*DIGITS, "ensemble.n_bootstrap=10", "ensemble.n_permutations=10",
                                   "ensemble.random_teams=2", "ensemble.team_sizes=[2]"],
    "experiment=cross_dataset_digits": [*ZOO, "train.source_dataset.train_per_class=7",
                                        "train.source_dataset.samples_per_class=1", "train.recipe.epochs=1",
                                        "train.recipe.batch_size=16"],
    "experiment=distill_digits": [*DIGITS, "distill.seeds=[0]", "distill.recipe.epochs=1",
                                  "distill.teachers=[vit_tiny_p8,mixer_p4]", "distill.n_boot=10"],
}
# what each README command that runs must leave: a file in its newest run folder (None: what it prints)
LEAVES = {"--help": None, "--cfg job": None, "-m attack.eps=0.0627451,0.1254902,0.2509804": "sweep_overview.md",
          "task=analyze": "report.md", "experiment=ensemble_digits": "ensemble_pairs.csv",
          "experiment=cross_dataset_digits": "compare/comparison.json",
          "experiment=distill_digits": "distill_results.csv",
          "experiment=smoke sat.precision=0.5 sat.first_round=10": "sat_ci.csv"}
README_RUNS = [c for c in COMMANDS if c.where.startswith(README) and not c.needs]


def test_every_readme_command_is_run_or_marked():
    """A README command nobody runs and nobody marked is a command nobody checked."""
    assert {c.text for c in README_RUNS} == set(RUNS)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The folder the README commands run in (outputs/, multirun/), with the module's cache in it."""
    return tmp_path_factory.mktemp("readme")


def newest_run(workdir: Path) -> Path | None:
    """The run (or sweep) folder made last under `workdir`; None before the first."""
    runs = [p for p in [*workdir.glob("outputs/*/*"), *workdir.glob("multirun/*/*")] if p.is_dir()]
    return max(runs, key=lambda p: p.stat().st_mtime_ns, default=None)


@pytest.mark.parametrize("command", README_RUNS, ids=[c.where for c in README_RUNS])
def test_readme_command_runs(command, workdir, satlab_in_process, one_thread):
    """The command as written, plus only its stated shrinking overrides: exit 0, no error line, its results."""
    text = command.text
    assert text in RUNS, f"{command.where}: run it here (RUNS) or mark what it needs"
    cache = workdir / "cache"
    before = newest_run(workdir)
    result = satlab_in_process([*command.args, *RUNS[text], f"paths.cache_dir={cache}"], workdir,
                               env={"SATLAB_CACHE_DIR": str(cache)})
    assert result.returncode == 0, f"satlab {text}\n{result.stderr[-3000:]}"
    assert "satlab: error:" not in result.stderr
    leaves = LEAVES.get(text, "sat_matrix.csv")
    if leaves is None:
        assert ("satlab" in result.stdout) if text == "--help" else ("task:" in result.stdout)
        return
    run = newest_run(workdir)
    assert run is not None and run != before and (run / leaves).is_file(), f"{run} has no {leaves}"
    if text.startswith("-m"):
        assert len([p for p in run.iterdir() if p.is_dir() and p.name.isdigit()]) == 3
    elif leaves == "sat_matrix.csv":
        summary = json.loads((run / "summary.json").read_text())
        assert summary["config"]["task"]["name"] == "sat"
