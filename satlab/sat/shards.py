"""Shards of a map: which source models' rows one run computes (`sat.shard`)."""

from __future__ import annotations

import difflib
import re
from typing import Any, Sequence

from satlab.utils import SatlabError


def select_sources(names: Sequence[str], shard: Any) -> list[str] | None:
    """The sources of a shard: None (all), `"i/n"` (every n-th source from the i-th, 0 <= i < n) or a list of
    model names. Bad input (index out of range, unknown or repeated names) raises SatlabError."""
    if shard is None or shard == "":
        return None
    names = list(names)
    if isinstance(shard, str):
        match = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", shard)
        if not match:
            raise SatlabError(f"sat.shard must be 'i/n' (shard i of n, 0 <= i < n) or a list of model names, "
                              f"got '{shard}'")
        i, n = int(match.group(1)), int(match.group(2))
        if n < 1 or not 0 <= i < n:
            raise SatlabError(f"sat.shard={shard}: shard index out of range; use i/n with n >= 1 and 0 <= i < n "
                              f"(e.g. sat.shard=0/{max(n, 2)} ... {max(n, 2) - 1}/{max(n, 2)})")
        if n > len(names):
            raise SatlabError(f"sat.shard={shard}: {n} shards for {len(names)} models would leave shards empty; "
                              f"use n <= {len(names)}")
        return names[i::n]
    chosen = [str(m) for m in shard]
    unknown = [m for m in chosen if m not in names]
    if unknown:
        hints = {m: difflib.get_close_matches(m, names, n=1) for m in unknown}
        hint = "; ".join(f"'{m}': did you mean '{h[0]}'?" for m, h in hints.items() if h)
        raise SatlabError(f"sat.shard names model(s) not in the model set: {', '.join(unknown)}"
                          f"{' (' + hint + ')' if hint else ''}; choose from {', '.join(names)}")
    repeated = sorted({m for m in chosen if chosen.count(m) > 1})
    if repeated:
        raise SatlabError(f"sat.shard lists {', '.join(repeated)} more than once (shards must not overlap)")
    if not chosen:
        raise SatlabError("sat.shard is an empty list; name at least one source model, or drop sat.shard")
    return chosen
