"""The option schema's mechanism: what one option may hold (`Key`), and checking dotted options against a schema.

Each stage declares the rules of its own options with it (the attack's fields in `satlab.attacks.gradient`, a
training recipe's in `satlab.train.recipe`, every other option in `satlab.tasks.checks.SCHEMA`), and
`satlab.tasks.checks.check_config` applies them all before any work. A failing option becomes one SatlabError,
`<key>=<value> <what it must be>`:

    >>> fail("sat.batch_size", 0, Key("int", 1))
    Traceback (most recent call last):
    satlab.utils.SatlabError: sat.batch_size=0 must be an integer >= 1
"""

from __future__ import annotations

import difflib
import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from satlab.utils import SatlabError


def one_line(text: str) -> str:
    """A (multi-line) message as one line: non-empty lines joined by '; '."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return "; ".join(lines).replace(":; ", ": ").replace(".; ", "; ")


def shown(value: Any) -> str:
    """`value` as written on the command line: true/false/null, [a, b]; a string that reads as something else
    (a number, a boolean, nothing) in quotes."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    if isinstance(value, str):
        try:
            float(value)
            looks_other = True
        except ValueError:
            looks_other = value.strip().lower() in ("", "true", "false", "null", "none")
        return repr(value) if looks_other else value
    return repr(value) if isinstance(value, float) else str(value)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


@dataclass(frozen=True)
class Key:
    """What one option may hold.

    kind: bool, int, number (finite int or float), choice (one of `choices`), ints (a list of integers) or path
    (a non-empty string: an empty one is usually a shell variable that is not set).
    low/high: bounds of numbers (and of each item of ints), excluded when `open_low`/`open_high`.
    nullable: null is allowed; `null_means` says what it does. words: literal strings also accepted ("auto").
    choices: a tuple; or "module:NAME", a tuple defined in code, or a function returning one (read only when the
    option is checked, so that importing the schema imports neither Lightning nor the analysis code).
    distinct/min_items: for ints. note: why the rule holds, shown after it. extra: a further rule on a value that
    fits (the whole phrase after `key=value`, or None).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    nullable: bool = False
    null_means: str = ""
    words: tuple = ()
    choices: tuple | str | Callable[[], tuple] = ()
    distinct: bool = False
    min_items: int = 0
    note: str = ""
    extra: Callable[[Any], str | None] | None = None

    def known(self) -> tuple:
        """The choices (read from code when given as "module:NAME" or a function)."""
        if callable(self.choices):
            return tuple(self.choices())
        if isinstance(self.choices, str):
            module, name = self.choices.split(":")
            return tuple(getattr(importlib.import_module(module), name))
        return self.choices

    def problem(self, value: Any) -> str | None:
        """None if `value` fits, else what is wrong with it (the phrase after `key=value`)."""
        if value is None and self.nullable:
            return None
        if isinstance(value, str) and value in self.words:
            return None
        if self.kind == "choice":
            known = [str(c) for c in self.known()]  # 32 and "32" are the same precision
            if value is not None and str(value) in known and not isinstance(value, bool):
                return None
            close = difflib.get_close_matches(str(value), known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            alts = ", ".join([*(["null"] if self.nullable else []), *self.words, *known])
            return f"is unknown; choose one of {alts}{self._why()}{hint}"
        if not self._fits(value):
            return f"must be {self.expected()}{self._why()}"
        return self.extra(value) if self.extra else None

    def _fits(self, value: Any) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "int":
            return _is_int(value) and self._in_range(value)
        if self.kind == "number":
            return _is_number(value) and self._in_range(value)
        if self.kind == "path":
            return isinstance(value, str) and bool(value.strip())
        if self.kind == "ints":
            return (isinstance(value, (list, tuple)) and len(value) >= self.min_items
                    and all(_is_int(v) and self._in_range(v) for v in value)
                    and (not self.distinct or len(set(value)) == len(value)))
        raise ValueError(f"unknown kind {self.kind!r}")

    def _in_range(self, value: float) -> bool:
        low_ok = self.low is None or (value > self.low if self.open_low else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return low_ok and high_ok

    def _range(self) -> str:
        if self.low is not None and self.high is not None:
            return (f" in {'(' if self.open_low else '['}{_num(self.low)}, {_num(self.high)}"
                    f"{')' if self.open_high else ']'}")
        if self.low is not None:
            return f" {'>' if self.open_low else '>='} {_num(self.low)}"
        if self.high is not None:
            return f" {'<' if self.open_high else '<='} {_num(self.high)}"
        return ""

    def expected(self) -> str:
        """What the option must be, e.g. 'null (the recipe's) or an integer >= 1'."""
        null = [f"null ({self.null_means})" if self.null_means else "null"] if self.nullable else []
        if self.kind == "bool":
            options = ["true", "false", *self.words, *null]
        elif self.kind == "path":
            options = [*null, "a folder path, not empty"]
        else:
            what = {"int": "an integer", "number": "a number"}.get(self.kind)
            if self.kind == "ints":
                least = {0: "a list of ", 1: "a non-empty list of "}.get(self.min_items, f"a list of at least "
                                                                            f"{self.min_items} ")
                what = f"{least}{'distinct ' if self.distinct else ''}integers"
            options = [*null, *self.words, f"{what}{self._range()}"]
        return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"

    def _why(self) -> str:
        return f" ({self.note})" if self.note else ""


SEED_HIGH = 2**32 - 1  # numpy and torch take seeds in [0, 2^32-1]
NUMBER = Key("number")
BOOL = Key("bool")
SEED = Key("int", 0, SEED_HIGH)
COUNT = Key("int", 1)  # a positive count
WORKERS = Key("int", 0, note="DataLoader worker processes; 0: load in the main process")
FLOOR = Key("number", 0, 100, open_low=True, open_high=True,  # eps_s of sat, ensemble, distill and analyze
            note="a transfer rate in %: it floors the argument of the log")
TOLERANCE = Key("number", 0)



def fail(key: str, value: Any, rule: Key) -> None:
    problem = rule.problem(value)
    if problem:
        raise SatlabError(f"{key}={shown(value)} {problem}")


def _select(cfg: Any, key: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every option matching `key` (`*`: each entry of a mapping); absent ones skipped."""
    from omegaconf import OmegaConf

    head, star, rest = key.partition(".*.")
    if star:
        node = OmegaConf.select(cfg, head, default=None, throw_on_missing=False)
        if OmegaConf.is_dict(node):
            for name in node:
                if OmegaConf.is_dict(node[name]):
                    for sub, value in _select(node[name], rest):
                        yield f"{head}.{name}.{sub}", value
        return
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None, throw_on_missing=False) if parent else cfg
    if not OmegaConf.is_dict(node) or leaf not in node or OmegaConf.is_missing(node, leaf):
        return
    value = node[leaf]
    yield key, (OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value)


def check_keys(cfg: Any, schema: Mapping[str, Key], prefix: str = "") -> None:
    """Raise one SatlabError for the first option of `schema` (dotted keys under `cfg`) that does not fit;
    `prefix` is prepended to the keys in the message."""
    for key, rule in schema.items():
        for name, value in _select(cfg, key):
            fail(f"{prefix}{name}", value, rule)
