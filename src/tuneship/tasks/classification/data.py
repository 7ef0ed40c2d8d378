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
    """Run every step in memory; raise `TuneshipError` on bad data.

    Splits named in `data.given` are read from their own files, cleaned the same way and used as
    they are (duplicates inside them are kept and counted); the others are cut from `source`.
    """
    raw = load.load_raw(cfg.source, cfg.format, cache_dir)
    validate.require_columns(raw, [cfg.text_column, cfg.label_column], cfg.source)
    label_names = cfg.label_names or sorted({str(v) for v in column(raw, cfg.label_column)})
    ds = _encoded(raw, cfg, label_names, cfg.source)
    rows_raw = len(ds)
    ds, drops = clean.clean(ds, _clean_opts(cfg), cfg.min_chars, cfg.drop_duplicates)
    validate.require_rows(ds, f"{cfg.source} after cleaning ({drops})")
    ds = ds.cast_column("label", datasets.ClassLabel(names=label_names))
    ds = split.stratified_subsample(ds, cfg.max_rows, seed)
    given = {name: _given(source, cfg, label_names, cache_dir)
             for name, source in cfg.given.items() if source}
    splits = _split(ds, cfg, seed, cut=[n for n in ("validation", "test") if n not in given])
    splits.update({name: part for name, (part, _) in given.items()})
    splits = datasets.DatasetDict({name: splits[name] for name in ("train", "validation", "test")})
    validate.require_disjoint(splits, given=sorted(given))
    digest = fingerprint(splits, extra=json.dumps(label_names))
    splits = tokenize.tokenize(splits, tokenizer, cfg.max_length)
    stats = {
        "dataset": cfg.name, "source": cfg.source, "fingerprint": digest,
        "label_names": label_names, "rows_raw": rows_raw, **drops,
        "rows": {name: len(s) for name, s in splits.items()},
        "label_counts": {name: _counts(s, label_names) for name, s in splits.items()},
        "given": {name: {"source": cfg.given[name], **counts} for name, (_, counts) in given.items()},
        **tokenize.length_stats(splits, cfg.max_length),
    }
    return Prepared(splits, stats)


def _encoded(raw: datasets.Dataset, cfg: DataConfig, label_names: list[str],
             source: str) -> datasets.Dataset:
    """`text` + label ids (names or ids in the file; a clear error naming the row otherwise)."""
    labels = validate.encode_labels(column(raw, cfg.label_column), label_names, cfg.label_column,
                                    source)
    ds = raw.select_columns([cfg.text_column])
    if cfg.text_column != "text":
        ds = ds.rename_column(cfg.text_column, "text")
    return ds.add_column("label", labels)


def _clean_opts(cfg: DataConfig) -> dict:
    return {"strip_html": cfg.strip_html, "unicode_form": cfg.unicode_form,
            "lowercase": cfg.lowercase}


def _given(source: str, cfg: DataConfig, label_names: list[str],
           cache_dir: str | None) -> tuple[datasets.Dataset, dict[str, int]]:
    """A split from its own file: cleaned like the rest, empty rows dropped, never
    deduplicated or re-split (its duplicate count is reported)."""
    raw = load.load_raw(source, None, cache_dir)
    validate.require_columns(raw, [cfg.text_column, cfg.label_column], source)
    ds, drops = clean.clean(_encoded(raw, cfg, label_names, source), _clean_opts(cfg),
                            cfg.min_chars, drop_duplicates=False)
    validate.require_rows(ds, f"{source} after cleaning")
    texts = column(ds, "text")
    counts = {"rows_raw": len(raw), "dropped_empty": drops["dropped_empty"],
              "duplicates_kept": len(texts) - len(set(texts))}
    return ds.cast_column("label", datasets.ClassLabel(names=label_names)), counts


def _split(ds: datasets.Dataset, cfg: DataConfig, seed: int,
           cut: list[str]) -> datasets.DatasetDict:
    """Cut the splits in `cut` (validation and/or test) from `ds`; the rest is train."""
    sizes = {"validation": cfg.validation_size, "test": cfg.test_size}
    if cut == ["validation", "test"]:
        splits = split.split(ds, cfg.validation_size, cfg.test_size, seed)
    elif cut:
        splits = split.split_off(ds, cut[0], sizes[cut[0]], seed)
    else:
        splits = datasets.DatasetDict(train=ds)
    splits["train"] = split.stratified_subsample(splits["train"], cfg.max_train_samples, seed)
    for name, part in splits.items():
        validate.require_rows(part, f"the {name} split")
    return splits


def _counts(ds: datasets.Dataset, names: list[str]) -> dict[str, int]:
    counted = Counter(column(ds, "label"))
    return {name: counted.get(i, 0) for i, name in enumerate(names)}

