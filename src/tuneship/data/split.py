"""Deterministic, stratified train/validation/test splits."""

from __future__ import annotations

import datasets

from tuneship.errors import TuneshipError


def stratified_subsample(ds: datasets.Dataset, n: int | None, seed: int) -> datasets.Dataset:
    """Keep `n` rows with the label proportions of `ds` (all of them if n is None or too big)."""
    if n is None or n >= len(ds):
        return ds
    return ds.train_test_split(train_size=n, stratify_by_column="label", seed=seed)["train"]


def split(ds: datasets.Dataset, validation_size: float, test_size: float,
          seed: int) -> datasets.DatasetDict:
    """Carve test, then validation, out of `ds` with a fixed seed; labels keep their balance."""
    try:
        first = ds.train_test_split(test_size=test_size, stratify_by_column="label", seed=seed)
        second = first["train"].train_test_split(
            test_size=validation_size / (1 - test_size), stratify_by_column="label", seed=seed
        )
    except ValueError as err:  # sklearn-style: too few rows for a stratified split
        raise TuneshipError(f"cannot split {len(ds)} rows into train/validation/test with every "
                            f"label in each ({err}); add data or lower the split sizes") from None
    return datasets.DatasetDict(
        train=second["train"], validation=second["test"], test=first["test"]
    )


def split_off(ds: datasets.Dataset, name: str, size: float, seed: int) -> datasets.DatasetDict:
    """Carve one split (`name`, a fraction `size`) out of `ds`; the rest is `train`."""
    try:
        parts = ds.train_test_split(test_size=size, stratify_by_column="label", seed=seed)
    except ValueError as err:
        raise TuneshipError(f"cannot cut a {name} split from {len(ds)} rows with every label in "
                            f"it ({err}); add data or lower data.{name}_size") from None
    return datasets.DatasetDict({"train": parts["train"], name: parts["test"]})
