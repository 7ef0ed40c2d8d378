"""Tokenization: truncate to `max_length`, no padding (the collator pads each batch)."""

from __future__ import annotations

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase

from tuneship.data.columns import column


def tokenize(splits: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase,
             max_length: int) -> datasets.DatasetDict:
    """Add `input_ids`, `attention_mask` and a `length` column (for length-grouped batches)."""

    def encode(batch: dict) -> dict:
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        return enc

    return splits.map(encode, batched=True, desc="tokenize")


def length_stats(splits: datasets.DatasetDict, max_length: int) -> dict[str, float]:
    """Token-length figures of the train split, and how many rows were truncated."""
    lengths = np.asarray(column(splits["train"], "length"))
    return {
        "tokens_mean": round(float(lengths.mean()), 2),
        "tokens_p95": float(np.percentile(lengths, 95)),
        "truncated_rows": int((lengths >= max_length).sum()),
    }
