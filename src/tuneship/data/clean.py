"""Text cleaning and row filtering; every dropped row is counted."""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Any

import datasets

from tuneship.data.columns import column

_TAG = re.compile(r"<[^>]{1,200}>")
_SPACE = re.compile(r"\s+")


def clean_text(text: str, *, strip_html: bool, unicode_form: str | None, lowercase: bool) -> str:
    """Unescape and strip HTML, normalise unicode, collapse whitespace."""
    if strip_html:
        text = _TAG.sub(" ", html.unescape(text))
    if unicode_form:
        text = unicodedata.normalize(unicode_form, text)
    text = _SPACE.sub(" ", text).strip()
    return text.lower() if lowercase else text


def clean(ds: datasets.Dataset, opts: dict[str, Any], min_chars: int,
          drop_duplicates: bool) -> tuple[datasets.Dataset, dict[str, int]]:
    """Clean the `text` column, drop short/empty and duplicate rows; return counts of drops."""
    ds = ds.map(
        lambda batch: {"text": [clean_text(t or "", **opts) for t in batch["text"]]},
        batched=True, desc="clean",
    )
    before = len(ds)
    ds = ds.filter(lambda batch: [len(t) >= max(min_chars, 1) for t in batch["text"]],
                   batched=True, desc="drop empty")
    counts = {"dropped_empty": before - len(ds), "dropped_duplicates": 0}
    if drop_duplicates:
        seen: set[str] = set()
        keep = [i for i, t in enumerate(column(ds, "text")) if not (t in seen or seen.add(t))]
        counts["dropped_duplicates"] = len(ds) - len(keep)
        ds = ds.select(keep)
    return ds, counts
