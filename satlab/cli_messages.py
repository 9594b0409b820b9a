"""The one `satlab: error:` line for what Hydra, PyYAML or submitit raise before a job runs (the edge's messages,
kept apart from `satlab.cli` so that it reads top to bottom): a malformed override and how to quote it, a config
group option that does not exist, a config file that is not YAML, a run folder that cannot be created, a sweep
SLURM cannot take. Each takes the exception and returns the line (None: not this case, the caller raises)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import yaml
from omegaconf.errors import OmegaConfBaseException


def hydra_text(text: str) -> str:
    """Hydra's message as one line, without its config search path."""
    from satlab.schema import one_line

    lines = str(text).splitlines()
    return one_line("\n".join(lines[: next((i for i, ln in enumerate(lines) if ln.strip().startswith(
        "Config search path")), len(lines))]))


def hydra_message(err: BaseException) -> str:
    """Hydra's (multi-line) message, with its OmegaConf cause, as one line; for an override Hydra cannot parse
    (a value with a space, a non-ASCII letter, a parenthesis or a #), how to quote it."""
    from hydra.errors import OverrideParseException

    if isinstance(err, OverrideParseException):
        return quote_hint(err)
    text = hydra_text(str(err))
    launcher = re.search(r"Could not find 'hydra/launcher/(submitit_\w+)'", text)
    if launcher:  # the launcher ships in an extra: `make demo` installs satlab without it
        return (f"hydra/launcher={launcher.group(1)} is Hydra's submitit launcher, which is not installed; install "
                "satlab's slurm extra: pip install -e '.[slurm]' in the clone (after make demo: "
                ".venv/bin/pip install -e '.[slurm]')")
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException):
        first = hydra_text(str(cause).splitlines()[0] if str(cause) else "")
        if first and first not in text:
            text = f"{text} ({first})"
    return text


def quote_hint(err) -> str:
    """The one line for an override Hydra's grammar rejects (`OverrideParseException`): Hydra's reason and, when
    the value holds a space, a non-ASCII letter or a character such as ( ) #, the override quoted as Hydra reads
    it (in a sweep, each comma-separated value quoted)."""
    override = str(getattr(err, "override", "") or "")
    text = hydra_text(str(err)).split("; See https://")[0]
    if text.startswith("LexerNoViableAltException"):  # Hydra's lexer names no reason, only a caret
        text = f"cannot read the override '{override}'"
    elif override and override not in text:
        text = f"cannot read the override '{override}' ({text})"
    key, sep, value = override.partition("=")
    if not (sep and value and needs_quotes(value)):
        return text
    sweeping = any(arg in ("-m", "--multirun") for arg in sys.argv[1:])
    values = value.split(",") if sweeping else [value]
    example = f"'{key}=" + ",".join(f'"{v}"' for v in values) + "'" if '"' not in value else \
        "'dataset.root=\"/data/my images\"'"
    return (f"{text}: Hydra needs quotes around a value with spaces, non-ASCII letters or characters such as ( ) #; "
            f"write {example} (double quotes for Hydra inside single quotes for the shell)")


def yaml_message(err: yaml.YAMLError) -> str:
    """The one line for a config file that is not valid YAML: the file, the line and column, the parser's reason."""
    mark = getattr(err, "problem_mark", None)
    where = f"'{mark.name}' line {mark.line + 1}, column {mark.column + 1}" if mark else "a config file"
    reason = getattr(err, "problem", None) or hydra_text(str(err))
    context = getattr(err, "context", None)
    return f"config file {where} is not valid YAML ({f'{context}: ' if context else ''}{reason}); fix that file"


def needs_quotes(value: str) -> bool:
    """Whether Hydra's grammar reads `value` only quoted: a space, a non-ASCII letter, ( ) # or the like."""
    return any(c.isspace() or not c.isascii() or c in "()#'\"\\{}<>|;&!$`" for c in value)


def run_dir_message(err: OSError) -> str | None:
    """The one line for an OSError Hydra raised creating the run (or sweep) folder, else None."""
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code)
        tb = tb.tb_next
    where = ("run_job", "launch", "sweep", "_save_config")  # Hydra's functions that create the folders
    if not any(f.co_name in where and f"{os.sep}hydra{os.sep}" in f.co_filename for f in frames):
        return None
    sweeping = any(arg in ("-m", "--multirun") for arg in sys.argv[1:])
    key = "hydra.sweep.dir" if sweeping else "hydra.run.dir"
    path = f" '{err.filename}'" if err.filename else ""
    return f"cannot create the run folder{path} ({err.strerror or err}); set {key}=<a writable folder>"


def launch_message(err: BaseException) -> str | None:
    """The one line for a sweep whose jobs submitit could not hand to SLURM (no `srun`/`sbatch` on this machine, or
    no controller `sbatch` can reach), else None: the error must come through submitit's own code."""
    frames, tb = [], err.__traceback__
    while tb is not None:
        frames.append(Path(tb.tb_frame.f_code.co_filename).parts)
        tb = tb.tb_next
    if not any("submitit" in parts for parts in frames) or not isinstance(err, (RuntimeError, OSError)) \
            or type(err).__name__ == "UncompletedJobError":  # a job ran and ended without a result: not the launch
        return None
    no_sbatch = isinstance(err, FileNotFoundError) and Path(str(err.filename or "")).name == "sbatch"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    reason = "no sbatch on PATH" if no_sbatch else re.sub(r"^sbatch:\s*", "", lines[-1]) if lines else \
        type(err).__name__
    return (f"hydra/launcher=submitit_slurm could not submit the jobs ({reason}); it needs a SLURM cluster: run "
            "the command where sbatch reaches the cluster's controller (a login node), or use "
            "hydra/launcher=submitit_local or no launcher on this machine")
