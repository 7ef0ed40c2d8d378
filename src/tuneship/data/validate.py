"""Checks that turn bad data into clear errors (column, row and value named)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import datasets

from tuneship.data.columns import column
from tuneship.errors import TuneshipError


def require_columns(ds: datasets.Dataset, columns: Sequence[str], source: str) -> None:
    """Every configured column is present."""
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise TuneshipError(
            f"{source}: column(s) {missing} not found; the file has {ds.column_names} "
            "(set data.text_column / data.label_column)"
        )


def encode_labels(values: list, label_names: list[str], column: str, source: str) -> list[int]:
    """Map label values (ids or names) to ids in `range(len(label_names))`."""
    by_name = {name: i for i, name in enumerate(label_names)}
    ids: list[int] = []
    for row, value in enumerate(values):
        label = _one_label(value, by_name, len(label_names))
        if label is None:
            raise TuneshipError(
                f"{source}: row {row + 2} (line, counting the header): column '{column}' has "
                f"{'no value' if _missing(value) else f'unknown label {value!r}'}; "
                f"expected one of {label_names} or ids 0..{len(label_names) - 1}"
            )
        ids.append(label)
    return ids


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _one_label(value: object, by_name: dict[str, int], n: int) -> int | None:
    if _missing(value):
        return None
    if isinstance(value, str):
        key = value.strip()
        if key in by_name:
            return by_name[key]
        value = int(key) if key.lstrip("-").isdigit() else key
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 <= value < n:
        return value
    return None


def require_rows(ds: datasets.Dataset, what: str) -> None:
    """Fail when a dataset or split is empty."""
    if len(ds) == 0:
        raise TuneshipError(f"{what} is empty: nothing is left to train or evaluate on")


def require_disjoint(splits: datasets.DatasetDict, given: Sequence[str] = ()) -> None:
    """No text appears in two splits (train/test leakage); `given` splits came from their own
    files, so an overlap there is the files' own, named in the error."""
    names = list(splits)
    texts = {name: set(column(splits[name], "text")) for name in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = texts[a] & texts[b]
            if shared:
                hint = ("the given file(s) of " + " and ".join(repr(n) for n in (a, b) if n in given)
                        + " overlap the other split: remove those rows from one file"
                        if {a, b} & set(given) else "enable data.drop_duplicates")
                raise TuneshipError(
                    f"{len(shared)} text(s) occur in both '{a}' and '{b}', e.g. "
                    f"{next(iter(shared))!r}: {hint}"
                )
