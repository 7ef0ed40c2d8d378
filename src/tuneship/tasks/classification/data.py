"""Classification data: raw file → cleaned, validated, label-encoded, split, tokenized splits."""

from __future__ import annotations

import json
from collections import Counter

import datasets
from transformers import PreTrainedTokenizerBase

from tuneship.config import DataConfig
from tuneship.data import clean, load, split, tokenize, validate
from tuneship.data.columns import column
from tuneship.data.fingerprint import fingerprint
from tuneship.workdir import Prepared


def prepare(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int,
            cache_dir: str | None = None) -> Prepared:
    """Run every step in memory; raise `TuneshipError` on bad data."""
    raw = load.load_raw(cfg.source, cfg.format, cache_dir)
    validate.require_columns(raw, [cfg.text_column, cfg.label_column], cfg.source)
    label_names = cfg.label_names or sorted({str(v) for v in column(raw, cfg.label_column)})
    labels = validate.encode_labels(column(raw, cfg.label_column), label_names, cfg.label_column,
                                    cfg.source)
    ds = raw.select_columns([cfg.text_column])
    if cfg.text_column != "text":
        ds = ds.rename_column(cfg.text_column, "text")
    ds = ds.add_column("label", labels)
    rows_raw = len(ds)
    opts = {"strip_html": cfg.strip_html, "unicode_form": cfg.unicode_form,
            "lowercase": cfg.lowercase}
    ds, drops = clean.clean(ds, opts, cfg.min_chars, cfg.drop_duplicates)
    validate.require_rows(ds, f"{cfg.source} after cleaning ({drops})")
    ds = ds.cast_column("label", datasets.ClassLabel(names=label_names))
    ds = split.stratified_subsample(ds, cfg.max_rows, seed)
    splits = _split(ds, cfg, seed)
    validate.require_disjoint(splits)
    digest = fingerprint(splits, extra=json.dumps(label_names))
    splits = tokenize.tokenize(splits, tokenizer, cfg.max_length)
    stats = {
        "dataset": cfg.name, "source": cfg.source, "fingerprint": digest,
        "label_names": label_names, "rows_raw": rows_raw, **drops,
        "rows": {name: len(s) for name, s in splits.items()},
        "label_counts": {name: _counts(s, label_names) for name, s in splits.items()},
        **tokenize.length_stats(splits, cfg.max_length),
    }
    return Prepared(splits, stats)


def _split(ds: datasets.Dataset, cfg: DataConfig, seed: int) -> datasets.DatasetDict:
    splits = split.split(ds, cfg.validation_size, cfg.test_size, seed)
    splits["train"] = split.stratified_subsample(splits["train"], cfg.max_train_samples, seed)
    for name, part in splits.items():
        validate.require_rows(part, f"the {name} split")
    return splits


def _counts(ds: datasets.Dataset, names: list[str]) -> dict[str, int]:
    counted = Counter(column(ds, "label"))
    return {name: counted.get(i, 0) for i, name in enumerate(names)}

