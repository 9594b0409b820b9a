"""The commands the docs quote that need what a fresh clone lacks say so, and stop at once: every command marked
`# needs: ...` (README.md and docs/) ends with one `satlab: error:` line per job that names what is missing, before
any work; a command that names a folder outside the clone, a GPU, the SLURM launcher or a download is marked.

The marking (docs/development.md, "Commands in the docs"): a quoted command that needs what a fresh clone lacks
ends with a comment `# ... needs: <what>[, <what>]` (an inline code span: `(needs: ...)` right after it). Each
<what> must name one of `NEEDS` below; tests/test_docs.py reads the marking (`Command.needs`).

Marked commands run in the clone's root (where the docs run them) with the Hugging Face hub offline and an empty
cache, no `srun`/`sbatch` on PATH, and their cache and run folders moved into tmp_path (`paths.cache_dir`,
`hydra.run.dir`/`hydra.sweep.dir` appended). Each must end with exit status 2 and error lines only about what it
needs, and leave no cache file (nothing trained, attacked or downloaded). One marked `network` is not run (it
would download).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from test_docs import COMMANDS, DUMMY, Command, _placeholders

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
INPUT, WEIGHTS, GPU, SLURM, NETWORK = "input", "weights", "gpu", "slurm", "network"
# a marked need (matched case-insensitively inside each <what>) -> what the error line must say
NEEDS = {"imagenet": INPUT, "flowers-102": INPUT, "fashion-mnist": INPUT, "cifar-10": INPUT, "your data": INPUT,
         "earlier run": INPUT, "sat_release.csv": INPUT, "pretrained weights": WEIGHTS, "gpu": GPU, "slurm": SLURM,
         "network": NETWORK}
SAYS = {WEIGHTS: re.compile(r"pretrained weights"), GPU: re.compile(r"gpu", re.I),
        SLURM: re.compile(r"SLURM|slurm extra")}

# a marked command -> the overrides that shrink it here (a sweep of 12 jobs that each fail alike: one job)
MARKED_RUNS = {"-m experiment=paper69_calibration dataset.root=/data/imagenet/val":
               ['hydra.sweeper.params={attack.eps:"0.0039215686",attack.steps:"2"}']}
# pages whose commands another change rewrites (the SLURM recipe): marked there, checked once it lands
MARKED = [c for c in COMMANDS if c.needs and not c.where.startswith("experiments/")]
DOC_COMMANDS = [c for c in COMMANDS if not c.where.startswith("experiments/")]


def kinds(command: Command) -> set[str]:
    """The kinds of what a marked command needs (`NEEDS`); an unknown <what> fails the test that reads it."""
    found = set()
    for what in command.needs:
        matched = [kind for word, kind in NEEDS.items() if word in what.lower()]
        assert matched, f"{command.where}: 'needs: {what}' names none of {sorted(NEEDS)}"
        found.update(matched)
    return found


def paths(command: Command) -> list[str]:
    """The paths a command names (values with a '/', placeholders filled in as tests/test_docs.py does)."""
    values = [v.strip("\"'") for arg in command.args if "=" in arg for v in arg.split("=", 1)[1].split(",")]
    return [_placeholders(v) for v in values if "/" in v or "<" in v]


def test_the_marking_is_read():
    """The marked commands are found, and between them they need every kind of thing `NEEDS` knows."""
    assert len(MARKED) > 20 and set().union(*map(kinds, MARKED)) == set(NEEDS.values())


@pytest.mark.parametrize("command", DOC_COMMANDS, ids=[c.where for c in DOC_COMMANDS])
def test_what_a_fresh_clone_lacks_is_marked(command):
    """A command naming a folder outside the clone or a placeholder, a GPU, the SLURM launcher or a download says
    so in its marking."""
    page = command.where.split(":")[0]
    text, needed = command.text, kinds(command)
    outside = [p for p in paths(command) if DUMMY in p or p.startswith("/") and not p.startswith("/tmp/")]
    if outside:
        assert needed & {INPUT, NETWORK}, f"{command.where}: names {outside}; mark it '# needs: ...'"
    if re.search(r"accelerator=gpu|devices=[2-9]", text):
        assert GPU in needed, f"{command.where}: mark it '# needs: a GPU'"
    if "submitit_slurm" in text:
        assert SLURM in needed, f"{command.where}: mark it '# needs: SLURM'"
    if "download=true" in text:
        assert NETWORK in needed, f"{command.where}: mark it '# needs: network'"


@pytest.mark.parametrize("command", MARKED, ids=[c.where for c in MARKED])
def test_marked_command_fails_fast_saying_what_it_needs(command, tmp_path, monkeypatch, satlab_in_process):
    """As a new user without it would: offline, nothing cached, no SLURM. One kind of line per job, naming a need;
    nothing trained, downloaded or attacked."""
    needed = kinds(command)
    if NETWORK in needed:
        pytest.skip("needs the network: running it would download")
    if GPU in needed and torch.cuda.is_available():
        pytest.skip("a GPU is here: the command would run")
    if "fashion-mnist" in " ".join(command.needs).lower() and DEBIAN_FASHION.is_dir():
        pytest.skip(f"{DEBIAN_FASHION} is here: the command would run")
    if "docs/examples/conf" in command.args:
        monkeypatch.syspath_prepend(str(ROOT / "docs" / "examples"))  # the page's `export PYTHONPATH=...`
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "bin").mkdir()
    cache = tmp_path / "cache"
    sweep = "-m" in command.args
    folder = f"hydra.sweep.dir={tmp_path / 'sweep'}" if sweep else f"hydra.run.dir={tmp_path / 'run'}"
    args = [_placeholders(a) for a in command.args]
    args += MARKED_RUNS.get(command.text, [])
    result = satlab_in_process([*args, f"paths.cache_dir={cache}", folder], ROOT,  # where the docs run them
                               env={"SATLAB_CACHE_DIR": str(cache), "HF_HOME": str(tmp_path / "hf"),
                                    "PATH": str(tmp_path / "bin")})
    errors = [line for line in result.stderr.splitlines() if line.startswith("satlab: error:")]
    assert result.returncode == 2 and errors, f"satlab {command.text}\n{result.stderr[-3000:]}"
    assert len(errors) == 1 or sweep, errors
    named = [os.path.normpath(p) for p in paths(command)]
    for line in errors:
        says = [SAYS[k].search(line) for k in needed if k in SAYS]
        says.append(INPUT in needed and any(p in line for p in [*named, DUMMY, "dataset.root"]))
        assert any(says), f"{command.where}: '{line}' names none of {command.needs}"
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # nothing trained, attacked or downloaded
    if not sweep:
        assert [p for p in (tmp_path / "run").rglob("*") if p.is_file()] == []
