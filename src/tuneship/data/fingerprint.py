"""A content hash of the processed splits: the same rows in the same order give the same id."""

from __future__ import annotations

import hashlib

import datasets

from tuneship.data.columns import column


def fingerprint(splits: datasets.DatasetDict, extra: str = "") -> str:
    """SHA-256 over split names, texts and labels (first 16 hex digits)."""
    digest = hashlib.sha256(extra.encode())
    for name in sorted(splits):
        split = splits[name]
        digest.update(f"\x1e{name}".encode())
        labels = column(split, "label") if "label" in split.column_names else [None] * len(split)
        for text, label in zip(column(split, "text"), labels, strict=True):
            digest.update(f"{text}\x1f{label}\x1d".encode())
    return digest.hexdigest()[:16]
