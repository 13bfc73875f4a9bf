"""Multi-label truths read from a label table, as bit masks (medclf.tasks), with one problem line per bad cell.

Two conventions (docs/data.md, "Sources"):

- Label sets (ChestX-ray14 `Finding Labels`): one column of finding names joined by `|`, e.g. `Effusion|Mass`;
  `No Finding` (any case) or an empty cell is the empty set. The label names are the sorted set of names seen,
  or the order the caller gives.
- 0/1 columns (CheXpert): one column per finding; `1`/`1.0` present, `0`/`0.0`/blank absent, `-1` uncertain,
  mapped by `uncertain`: `zero` (absent, "U-Zeros", the default), `one` (present, "U-Ones") or `drop` (the
  image is left out and counted). Irvin et al. 2019 compare these policies; U-Zeros is the simplest baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from medclf.errors import DataError
from medclf.labelsets import MAX_LABELS, NO_FINDING, encode_multi_hot

SEPARATOR = "|"
UNCERTAIN = ("zero", "one", "drop")
_NO_FINDING = {NO_FINDING.lower(), "no_finding", ""}


@dataclass
class MultiLabels:
    """Per row a bit mask, -1 where the row is unusable (malformed, or uncertain under `drop`)."""

    masks: np.ndarray
    names: list[str]
    malformed: list[str] = field(default_factory=list)  # "file:line: problem"
    dropped: list[str] = field(default_factory=list)  # "file:line: path" of rows left out as uncertain


def check_names(names: Sequence[str], where: str) -> list[str]:
    """Label names usable for a multi-label set: 1..MAX_LABELS distinct names, `No Finding` not among them."""
    names = list(names)
    if not 1 <= len(names) <= MAX_LABELS:
        raise DataError(f"{where}: a multi-label set needs 1 to {MAX_LABELS} label names, got {len(names)}")
    if len(set(names)) != len(names) or any(n.strip().lower() in _NO_FINDING for n in names):
        raise DataError(f"{where}: label names must be distinct and not '{NO_FINDING}' (the empty set), got {names}")
    return names


def no_positive(positive: str | int | None, where: str | Path) -> int:
    """positive_index of a multi-label set, 0 (unused: each label is its own positive); `positive` is refused."""
    if positive is not None:
        raise DataError(f"{where}: --positive applies to binary sets; a multilabel set has none")
    return 0


def parse_label_sets(raw: pd.Series, lines: pd.Series, csv: Path,
                     label_names: Sequence[str] | None = None) -> MultiLabels:
    """`A|B` cells -> masks; a name outside `label_names` (when given) is a malformed row."""
    sets = [_tokens(v) for v in raw]
    seen = sorted({t for s in sets if s is not None for t in s})
    names = check_names(label_names or seen, str(csv))
    bit = {n: 1 << i for i, n in enumerate(names)}
    masks = np.full(len(sets), -1, dtype=np.int64)
    malformed = []
    for row, (tokens, value, line) in enumerate(zip(sets, raw, lines)):
        unknown = None if tokens is None else [t for t in tokens if t not in bit]
        if tokens is None or unknown:
            why = f"names {NO_FINDING} with findings" if tokens is None else f"{unknown[0]!r} is not one of {names}"
            malformed.append(f"{csv.name}:{line}: label {value!r}: {why}")
            continue
        masks[row] = sum(bit[t] for t in tokens)
    return MultiLabels(masks, names, malformed)


def _tokens(value: str) -> set[str] | None:
    """The findings of one cell; None when it names No Finding beside findings (contradictory)."""
    tokens = {t.strip() for t in str(value).split(SEPARATOR)} - {""}
    empty = {t for t in tokens if t.lower() in _NO_FINDING}
    if empty and tokens - empty:
        return None
    return tokens - empty


def parse_label_columns(frame: pd.DataFrame, columns: Sequence[str], csv: Path,
                        uncertain: str = "zero") -> MultiLabels:
    """0/1/-1/blank columns of `frame` (which has `line` and `path`) -> masks; `uncertain` maps -1 (`drop`: the
    row is left out and listed in `dropped`)."""
    if uncertain not in UNCERTAIN:
        raise DataError(f"--uncertain {uncertain!r}: valid values are {', '.join(UNCERTAIN)}")
    names = check_names(columns, str(csv))
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise DataError(f"{csv}: --label-columns {missing} not in the CSV (its columns: {list(frame.columns)})")
    values = frame[names].apply(lambda c: pd.to_numeric(c.replace("", "0"), errors="coerce"))
    bad = ~values.isin([0.0, 1.0, -1.0]).to_numpy()
    lines = frame["line"].to_numpy()
    malformed = [f"{csv.name}:{lines[r]}: {names[c]} {frame[names[c]].iat[r]!r} is not 1, 0, -1 or blank"
                 for r, c in zip(*np.nonzero(bad))]
    unsure = (values == -1.0).to_numpy()
    present = (values == 1.0).to_numpy() | (unsure & (uncertain == "one"))
    masks = encode_multi_hot(present)
    drop = unsure.any(axis=1) & (uncertain == "drop") & ~bad.any(axis=1)
    masks[bad.any(axis=1) | drop] = -1
    dropped = [f"{csv.name}:{ln}: {p}" for ln, p in zip(lines[drop], frame["path"].to_numpy()[drop])]
    return MultiLabels(masks, names, malformed, dropped)
