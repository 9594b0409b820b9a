"""The documentation stays true: every `satlab ...` command it quotes composes, every relative link resolves.

Commands: in README.md, docs/*.md and experiments/*/README.md, every line of a fenced or indented code block and
every inline code span that runs `satlab` is parsed like a shell (shlex) and composed with Hydra's compose API
against `conf/` (plus the folder of `--config-dir`). Placeholders (`<run>`, `...`) become a dummy path; `hydra.*`
and `hydra/...` overrides (launcher, run folder) are dropped; `--help`, `--cfg` and the like are dropped; a sweep
(`-m`) composes each option of a swept config group and the first value of any other swept key.
docs/bad-input.md is left out: its commands are wrong on purpose, and tests/test_bad_input.py runs them. Each
command keeps its marking (`# needs: ...`, `Command.needs`): tests/test_docs_run.py runs the README's commands and
checks that each marked one fails fast saying what it needs.

Links: every relative link and image in those files must reach a file or folder, and an anchor (`#...`) a heading
of the target, slugged as GitHub does.
"""

from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "experiments").glob("*/README.md")])
BAD_INPUT_PAGE = ROOT / "docs" / "bad-input.md"  # commands that must fail: tests/test_bad_input.py runs them
DUMMY = "/tmp/satlab-docs-placeholder"
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--config-name", "-cn", "--experimental-rerun"}
FLAGS = {"--help", "-h", "--hydra-help", "--resolve", "--version", "--shell-completion", "-sc", "--run", "-r"}
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
NOT_SHELL = {"python", "py", "yaml", "yml", "json", "toml", "ini", "text", "bibtex"}
WRAPPERS = {"timeout", "time", "nohup", "env", "exec"}  # `timeout -s KILL 25 satlab ...` runs satlab


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --- commands ----------------------------------------------------------------------------------------------------


NEEDS_COMMENT = re.compile(r"#[^#]*\bneeds:\s*([^#]+)$")
NEEDS_AFTER_SPAN = re.compile(r"^\s*\(needs:\s*([^)]+)\)")


def needs_of(text: str) -> tuple[str, ...]:
    """What a quoted command needs beyond a fresh clone, from its marking: a shell line's trailing comment
    `# ... needs: ImageNet, pretrained weights`, or the `(needs: ...)` right after an inline code span."""
    code, _, prose = text.partition("\n")  # an inline span: the span, then the prose after it
    found = NEEDS_AFTER_SPAN.search(prose) if prose else NEEDS_COMMENT.search(code)
    return tuple(item.strip() for item in found.group(1).split(",") if item.strip()) if found else ()


def _code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of shell code (fenced blocks other than python/yaml/..., indented blocks), continuation
    lines joined; inline code spans too, each followed by the prose after it on its line (for its marking)."""
    found, in_fence, shell, pending, start = [], False, False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            shell = in_fence and line.strip().lstrip("`~").strip().lower() not in NOT_SHELL
            continue
        indented = not in_fence and line.startswith("    ") and line.strip().startswith("satlab ")  # not output
        if (in_fence and shell) or indented or pending:
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            found.append((start, pending + line))
            pending = ""
        elif not in_fence:
            found.extend((number, f"{span.group(1)}\n{line[span.end():]}") for span in INLINE.finditer(line)
                         if span.group(1).lstrip().startswith("satlab "))
    return found


def _commands(line: str) -> list[list[str]]:
    """The argument lists of every `satlab` command on one shell line (after `;`, `&&`, `|`, env assignments)."""
    line = re.sub(r"^\s*\$ ", "", line.split("\n")[0])  # an inline span: the prose after it is not code
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote: not a shell line (prose in a code block)
        return []
    commands, current = [], []
    for token in [*tokens, ";"]:
        if token and set(token) <= set(";&|"):
            program = next((i for i, t in enumerate(current) if not re.match(r"^[A-Za-z_]\w*=", t)), None)
            if program is not None and (current[program] == "satlab" or current[program] in WRAPPERS):
                if "satlab" in current[program:]:
                    commands.append(current[current.index("satlab", program) + 1:])
            current = []
        else:
            current.append(token)
    return commands


@dataclass(frozen=True)
class Command:
    where: str
    args: tuple[str, ...]
    needs: tuple[str, ...] = ()  # what it needs beyond a fresh clone (its `needs:` marking)

    @property
    def text(self) -> str:
        """The arguments as one string (how tests key a command)."""
        return " ".join(self.args)


def _collect() -> list[Command]:
    seen, commands = set(), []
    for page in PAGES:
        if page == BAD_INPUT_PAGE:
            continue
        for number, line in _code_lines(page.read_text()):
            for args in _commands(line):
                if tuple(args) not in seen:
                    seen.add(tuple(args))
                    commands.append(Command(f"{rel(page)}:{number}", tuple(args), needs_of(line)))
    return commands


COMMANDS = _collect()


def _placeholders(arg: str) -> str:
    arg = re.sub(r"<[^<>]*>", DUMMY, arg)
    return arg.replace("...", DUMMY)


def _overrides(args: tuple[str, ...]) -> tuple[list[str], list[Path], bool]:
    """(Hydra overrides, extra config dirs, multirun) of a command's arguments."""
    overrides, dirs, multirun, skip_next = [], [], False, False
    for i, arg in enumerate(args):
        if skip_next:
            skip_next = False
            continue
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in ("--config-dir", "-cd"):
            dirs.append(ROOT / args[i + 1])
            skip_next = True
        elif arg.startswith("--config-dir="):
            dirs.append(ROOT / arg.split("=", 1)[1])
        elif arg in FLAGS_WITH_VALUE:
            skip_next = i + 1 < len(args) and not args[i + 1].startswith("-") and "=" not in args[i + 1]
        elif arg in FLAGS or arg == "...":
            continue
        elif arg.startswith("-"):
            raise AssertionError(f"unknown flag {arg}")
        else:
            overrides.append(_placeholders(arg))
    return overrides, dirs, multirun


def _group_options(group: str, dirs: list[Path]) -> set[str] | None:
    """The options of config group `group` (None when it is not a group)."""
    return _options(group, tuple(dirs))


@functools.lru_cache(maxsize=None)
def _options(group: str, dirs: tuple[Path, ...]) -> set[str] | None:
    folders = [d / group for d in (CONF, *dirs) if (d / group).is_dir()]
    return {p.stem for f in folders for p in f.glob("*.yaml")} if folders else None


def _compositions(overrides: list[str], dirs: list[Path], multirun: bool) -> tuple[list[list[str]], str | None]:
    """The override lists to compose, and a reason to skip (a pending group option), if any."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed, swept = [], []
    for override in parsed:
        key = override.key_or_group
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue  # launcher, run folders: not part of the job's config
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else None
        options = _group_options(key, dirs)
        choices = values if values is not None else [override.get_value_element_as_str()]
        if options is not None and not override.is_delete():
            for choice in choices:
                if choice not in options and choice != "null":
                    raise AssertionError(f"{key}={choice}: no such option (have {sorted(options)})")
        if values is None:
            fixed.append(override.input_line)
        elif not multirun:
            raise AssertionError(f"{override.input_line} is a sweep: the command needs -m")
        elif options is not None:
            swept.extend([f"{override.get_key_element()}={v}"] for v in values)
        else:
            fixed.append(f"{override.get_key_element()}={values[0]}")
    return [fixed + extra for extra in swept] or [fixed], None


def _search(dirs: list[Path]) -> list[str]:
    return [f"hydra.searchpath=[{','.join('file://' + str(d.resolve()) for d in dirs)}]"] if dirs else []


def _key(line: str) -> str:
    return re.split(r"[=@]", line.lstrip("+~"), maxsplit=1)[0]


def _clash(a: str, b: str) -> bool:
    """Two overrides that cannot be checked in one composition: an addition or deletion of the same key, or keys
    one inside the other. Two plain settings of one key can: each is checked against the same config."""
    ka, kb = _key(a), _key(b)
    if ka == kb:
        return a[0] in "+~" or b[0] in "+~"
    return ka.startswith(kb + ".") or kb.startswith(ka + ".")


def _plan(commands: list[Command]) -> dict[tuple[str, ...], int]:
    """Each composition (search path + overrides) -> the batch it is composed in. One `compose()` per command costs
    about 0.1 s of CPU; compositions with the same search path and group options whose other overrides touch
    different keys are composed together, in one call: Hydra applies each override to its own key."""
    batches: list[tuple[tuple[str, ...], list[str]]] = []  # (search + group overrides, value overrides)
    plan = {}
    for command in commands:
        overrides, dirs, multirun = _overrides(command.args)
        try:
            compositions, reason = _compositions(overrides, dirs, multirun)
        except AssertionError:
            continue  # its test reports it
        for extra in [] if reason else compositions:
            groups = tuple(_search(dirs)) + tuple(sorted(o for o in extra if _group_options(_key(o), dirs) is not None))
            values = [o for o in extra if _group_options(_key(o), dirs) is None]
            for number, (base, taken) in enumerate(batches):
                if base == groups and not any(_clash(a, b) for a in values for b in taken):
                    taken.extend(values)
                    break
            else:
                number = len(batches)
                batches.append((groups, list(values)))
            plan[tuple(_search(dirs)) + tuple(extra)] = number
    return plan, batches


PLAN, BATCHES = _plan(COMMANDS)
_BATCH_COMPOSED: dict[int, bool] = {}


def _composes_in_batch(number: int) -> bool:
    if number not in _BATCH_COMPOSED:
        groups, values = BATCHES[number]
        try:
            _BATCH_COMPOSED[number] = bool(compose("config", overrides=[*groups, *values]).task.name)
        except Exception:  # noqa: BLE001 - a failing member is found by composing it alone
            _BATCH_COMPOSED[number] = False
    return _BATCH_COMPOSED[number]


@pytest.fixture(scope="module")
def hydra_conf():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def test_the_docs_quote_commands():
    """The extraction finds the commands the README promises (guards the parser itself)."""
    quoted = {" ".join(c.args) for c in COMMANDS}
    assert "experiment=smoke" in quoted and "-m attack.eps=0.0627451,0.1254902,0.2509804" in quoted
    assert any(c.where.startswith("README.md") for c in COMMANDS)
    assert any(a.startswith("--config-dir") for c in COMMANDS for a in c.args)
    assert len(COMMANDS) > 50 and len(BATCHES) < len(PLAN)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_quoted_command_composes(command, hydra_conf):
    overrides, dirs, multirun = _overrides(command.args)
    compositions, reason = _compositions(overrides, dirs, multirun)
    if reason:
        pytest.skip(reason)
    for extra in compositions:
        overrides = [*_search(dirs), *extra]
        if not _composes_in_batch(PLAN[tuple(overrides)]):
            cfg = compose("config", overrides=overrides)  # alone: raises Hydra's error for this command
            assert cfg.task.name, f"satlab {' '.join(command.args)}"


def test_compositions_of_sweeps_and_placeholders():
    """The rules above, on made-up commands."""
    overrides, dirs, multirun = _overrides(("-m", "dataset=digits,shapes", "attack.eps=0.1,0.2",
                                            "analyze.matrix=<path>/x.csv", "hydra/launcher=submitit_slurm",
                                            "hydra.launcher.partition=gpu", "--cfg", "job"))
    assert multirun and not dirs and f"analyze.matrix={DUMMY}/x.csv" in overrides
    compositions, reason = _compositions(overrides, dirs, multirun)
    assert reason is None
    assert compositions == [["attack.eps=0.1", f"analyze.matrix={DUMMY}/x.csv", "dataset=digits"],
                            ["attack.eps=0.1", f"analyze.matrix={DUMMY}/x.csv", "dataset=shapes"]]
    assert _compositions(["model_set=timm"], [], False) == ([["model_set=timm"]], None)
    with pytest.raises(AssertionError, match="no such option"):
        _compositions(["experiment=nosuch"], [], False)
    with pytest.raises(AssertionError, match="needs -m"):
        _compositions(["attack.eps=0.1,0.2"], [], False)
    assert _commands("satlab --help; satlab --cfg job  # both") == [["--help"], ["--cfg", "job"]]
    assert _commands("timeout -s KILL 25 satlab experiment=smoke") == [["experiment=smoke"]]


# --- links -------------------------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside code blocks, inline code removed."""
    lines, in_fence = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            lines.append((number, re.sub(r"`[^`]*`", "", line)))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(page: Path) -> set[str]:
    found, counts, in_fence = set(), {}, False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            found.add(base if base not in counts else f"{base}-{counts[base]}")
            counts[base] = counts.get(base, 0) + 1
    return found


def _links() -> list[tuple[str, Path, str]]:
    links = []
    for page in PAGES:
        for number, line in _prose(page.read_text()):
            for target in LINK.findall(line):
                if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                    links.append((f"{rel(page)}:{number}", page, target))
    return links


LINKS = _links()


def test_slugs_are_githubs():
    assert slug("Analysing a SAT matrix (`task=analyze`)") == "analysing-a-sat-matrix-taskanalyze"
    assert slug("Trust: caches, resume, determinism, bad input") == "trust-caches-resume-determinism-bad-input"
    assert slug("`make demo` on a fresh clone") == "make-demo-on-a-fresh-clone"
    assert len(LINKS) > 50


@pytest.mark.parametrize("where, page, target", LINKS, ids=[f"{w}->{t}" for w, _, t in LINKS])
def test_relative_link_resolves(where, page, target):
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    assert file.exists(), f"{where}: {target} does not exist"
    if anchor:
        assert file.suffix == ".md", f"{where}: an anchor into {rel(file)}, which is not a page"
        assert anchor in anchors(file), f"{where}: no heading '#{anchor}' in {rel(file)}"
