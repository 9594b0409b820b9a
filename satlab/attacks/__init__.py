"""Attacks: a small registry of pixel-space gradient attacks and a `create_attack` factory (timm style).

Configs build them with `_target_: satlab.attacks.create_attack` and `name: <registered name>`.
"""

from __future__ import annotations

import difflib
from typing import Any

from satlab.attacks.gradient import Attack, attack_loss
from satlab.utils import SatlabError

# name -> defaults that make the attack what its name says; the user's arguments override them
_REGISTRY: dict[str, dict[str, Any]] = {
    "pgd_linf": dict(norm="linf", random_start=True),
    "pgd_l2": dict(norm="l2", random_start=True),
    "fgsm": dict(norm="linf", steps=1, random_start=False),
    "mifgsm": dict(norm="linf", random_start=False, momentum=1.0),
}


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
    for key in ("eps", "step_size", "momentum"):
        if args.get(key) is not None:
            args[key] = _number(key, args[key])
    if args.get("steps") is not None:
        args["steps"] = _integer("steps", args["steps"])
    if name == "fgsm" and args.get("step_size") is None and args.get("eps", Attack.eps) > 0:
        args["step_size"] = args.get("eps", Attack.eps)  # eps <= 0: left to Attack (eps=0 is a no-op attack)
    return Attack(name=name, **args)


def _integer(key: str, value: Any) -> int:
    number = _number(key, value)
    if not number.is_integer():
        raise SatlabError(f"attack.{key} must be a whole number, got '{value}'")
    return int(number)


def _number(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SatlabError(f"attack.{key} must be a number, got '{value}'") from None


__all__ = ["Attack", "attack_loss", "create_attack", "list_attacks"]
