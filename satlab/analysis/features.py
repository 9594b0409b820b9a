"""Pair features from architecture components: how alike two models are, one number per component.

Component values are the strings of the paper's released table (`model_features.csv`):

- `"~"` or `"-"` means *not applicable* (e.g. the location of channel-wise attention in a model without it). It is a
  value of its own: two "not applicable" models agree, a "not applicable" and an applicable one differ.
- `"A + B"` lists several values (e.g. activation "ReLU + SiLU"); `"Yes (A, B)"` lists several kinds of one
  thing (e.g. 2D self-attention "Yes (Halo, BoT)", read as {"Yes (Halo)", "Yes (BoT)"}).
- An empty / missing value means *unknown*.

For a categorical component the pair feature is the Jaccard overlap of the two value sets (case- and
space-insensitive): 1 = same, 0 = nothing shared, "ReLU + SiLU" vs "ReLU" = 0.5. For `input_resolution` ("224 x 224")
it is the absolute difference of the side lengths in pixels (geometric mean of the numbers for non-square inputs).
A component unknown for some of the models, or taking a single value over all of them, is dropped with a note.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from satlab.models.specs import COMPONENTS
from satlab.utils import SatlabError

NOT_APPLICABLE = frozenset({"n/a"})
NUMERIC_COMPONENTS = ("input_resolution",)
_NA_TEXT = {"~", "-", "n/a", "na", "none"}
_UNKNOWN_TEXT = {"", "nan", "?", "unknown", "null"}
_KINDS = re.compile(r"^(?P<head>[^()]+?)\s*\((?P<kinds>[^()]*)\)$")


def parse_value(text: object) -> frozenset[str] | None:
    """The set of values in one table cell; None when unknown, {"n/a"} when not applicable."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    raw = " ".join(str(text).split()).strip()
    if raw.lower() in _UNKNOWN_TEXT:
        return None
    if raw.lower() in _NA_TEXT:
        return NOT_APPLICABLE
    values: set[str] = set()
    for part in raw.split("+"):
        part = part.strip().lower()
        if not part:
            continue
        match = _KINDS.match(part)
        if match and "," in match["kinds"]:
            values.update(f"{match['head']} ({k.strip()})" for k in match["kinds"].split(",") if k.strip())
        else:
            values.add(part)
    return frozenset(values) if values else None


def overlap(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard overlap of two value sets: |a & b| / |a | b| (1 for two equal sets)."""
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def parse_resolution(text: object) -> float | None:
    """Side length in pixels of an input resolution such as "224 x 224" or "224"; None when unknown."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    numbers = [float(n) for n in re.findall(r"\d+(?:\.\d+)?", str(text))]
    if not numbers or str(text).strip().lower() in _NA_TEXT:
        return None
    return float(np.exp(np.mean(np.log(numbers)))) if all(n > 0 for n in numbers) else None


def component_table(
    metadata: Mapping[str, Mapping[str, object]],
    models: Sequence[str],
    components: Iterable[str] = COMPONENTS,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Parsed components of `models` (rows) and the components dropped, with the reason for each.

    `metadata[model][component]` is the raw table string. Cells of categorical components become frozensets,
    `input_resolution` becomes a float. Every model must be a key of `metadata` (the caller checks this).
    """
    kept: dict[str, list] = {}
    dropped: dict[str, str] = {}
    for comp in components:
        parse = parse_resolution if comp in NUMERIC_COMPONENTS else parse_value
        column = [parse((metadata.get(m) or {}).get(comp)) for m in models]
        unknown = [m for m, v in zip(models, column) if v is None]
        if len(unknown) == len(models):
            dropped[comp] = "unknown for every model"
        elif unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            dropped[comp] = f"unknown for {len(unknown)} of {len(models)} models ({shown})"
        elif len(set(column)) == 1:
            dropped[comp] = "the same for every model"
        else:
            kept[comp] = column
    return pd.DataFrame(kept, index=pd.Index(list(models), name="model")), dropped


def pair_index(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the upper triangle (i < j) of an n x n matrix, row-major."""
    return np.triu_indices(n, k=1)


def pair_features(table: pd.DataFrame) -> pd.DataFrame:
    """One row per model pair (i < j in the table's order), one column per component of `table`.

    Columns `model_a`, `model_b` name the pair; categorical components give the overlap in [0, 1],
    `input_resolution` gives the absolute difference in pixels.
    """
    models = list(table.index)
    rows, cols = pair_index(len(models))
    out = {"model_a": [models[i] for i in rows], "model_b": [models[j] for j in cols]}
    for comp in table.columns:
        values = list(table[comp])
        if comp in NUMERIC_COMPONENTS:
            arr = np.asarray(values, dtype=float)
            out[comp] = np.abs(arr[rows] - arr[cols])
        else:
            out[comp] = np.array([overlap(values[i], values[j]) for i, j in zip(rows, cols)], dtype=float)
    return pd.DataFrame(out)


def symmetrize(matrix: np.ndarray) -> np.ndarray:
    """(M + M^T) / 2 as float (a SAT matrix is symmetric up to rounding)."""
    matrix = np.asarray(matrix, dtype=float)
    return 0.5 * (matrix + matrix.T)


def pair_targets(matrix: np.ndarray) -> np.ndarray:
    """The upper-triangle values of a square matrix, in the row order of `pair_features`."""
    rows, cols = pair_index(matrix.shape[0])
    return np.asarray(matrix, dtype=float)[rows, cols]


def resolve_metadata(
    names: Sequence[str],
    catalog: Mapping[str, Mapping[str, object]],
    table: pd.DataFrame | None = None,
) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, str]]:
    """Components, family and source of every model in `names`, from a model set catalog or a models table.

    `catalog[name]` = {"family": str, "components": {component: str}}; `table` has a `model` column, optionally
    `family`, and component columns named as in COMPONENTS (the `models.csv` a SAT run writes). A catalog entry
    with components wins; otherwise the table's row; a model in neither raises SatlabError naming it.
    """
    rows: dict[str, dict] = {}
    if table is not None and "model" in table.columns:
        comp_cols = [c for c in table.columns if c in COMPONENTS]
        for rec in table.to_dict(orient="records"):
            rows[str(rec["model"]).strip()] = {
                "family": str(rec.get("family") or "").strip(),
                "components": {c: str(rec[c]) for c in comp_cols if str(rec[c]).strip()},
            }
    components, families, sources = {}, {}, {}
    missing = []
    for name in names:
        entry = catalog.get(name)
        if entry is not None and (entry.get("components") or name not in rows):
            source = "model set catalog"
        elif name in rows:
            entry, source = rows[name], "models.csv"
        else:
            missing.append(name)
            continue
        comps = {str(k): str(v) for k, v in dict(entry.get("components") or {}).items()}
        components[name] = comps
        families[name] = str(entry.get("family") or comps.get("base_architecture") or "unknown")
        sources[name] = source
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise SatlabError(
            f"{len(missing)} model(s) of the matrix have no component metadata: {shown}; they are in neither the "
            "model set's catalog nor a models.csv next to the matrix (for the paper's matrix use model_set=paper69)"
        )
    return components, families, sources
