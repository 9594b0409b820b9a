"""Attacks: a small registry of pixel-space gradient attacks and a `create_attack` factory (timm style).

Configs build them with `_target_: satlab.attacks.create_attack` and `name: <registered name>`.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from typing import Any

from satlab.attacks.gradient import Attack, attack_loss
from satlab.utils import SatlabError

# name -> defaults that make the attack what its name says; the user's arguments override them
_REGISTRY: dict[str, dict[str, Any]] = {
    "pgd_linf": dict(norm="linf", random_start=True),
    "pgd_l2": dict(norm="l2", random_start=True, quantize=False),  # why unrounded: conf/attack/pgd_l2.yaml
    "fgsm": dict(norm="linf", steps=1, random_start=False),
    "mifgsm": dict(norm="linf", random_start=False, momentum=1.0),
}


def register_attack(name: str, **defaults: Any) -> None:
    """Register an attack by the `Attack` fields that make it what its name says (e.g. BIM:
    `register_attack("bim", norm="linf", random_start=False)`); `create_attack(name, ...)` then builds it.
    A name already registered with other defaults is an error (two meanings for one name)."""
    if name in _REGISTRY and _REGISTRY[name] != defaults:
        raise SatlabError(f"attack '{name}' is registered already with {_REGISTRY[name]}; choose another name")
    _REGISTRY[name] = dict(defaults)


def list_attacks() -> list[str]:
    """Names of the registered attacks."""
    return sorted(_REGISTRY)


def create_attack(name: str, **kwargs: Any) -> Attack:
    """Build a registered attack; FGSM takes one step of size eps unless told otherwise."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list_attacks(), n=2)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SatlabError(f"unknown attack '{name}'; choose one of {', '.join(list_attacks())}{hint}")
    args = {**_REGISTRY[name], **{k: v for k, v in kwargs.items() if v is not None or k == "step_size"}}
    for key in ("eps", "step_size", "momentum", "steps"):
        if isinstance(args.get(key), str):
            args[key] = _number(args[key])
    if isinstance(args.get("steps"), float) and args["steps"].is_integer():
        args["steps"] = int(args["steps"])
    attack = Attack(name=name, **args)  # checks every field (satlab.attacks.gradient.ATTACK)
    if name == "fgsm" and attack.step_size is None:
        attack = replace(attack, step_size=attack.eps)  # one step of the budget used (after any snapping)
    return attack


def _number(value: str) -> float | str:
    """A number given as a string on the command line ('0.0314'); anything else ('8/255') as given, for the
    schema to refuse."""
    try:
        return float(value)
    except ValueError:
        return value


__all__ = ["Attack", "attack_loss", "create_attack", "list_attacks", "register_attack"]
