"""The preprocess stage: raw file → cleaned, validated, split, tokenized DatasetDict on disk."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets
from transformers import PreTrainedTokenizerBase

from tuneship.config import DataConfig
from tuneship.data import clean, load, split, tokenize, validate
from tuneship.data.columns import column
from tuneship.data.fingerprint import fingerprint

STATS_FILE = "stats.json"


@dataclass
class Prepared:
    """The processed splits and the figures that describe them."""

    splits: datasets.DatasetDict
    stats: dict


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


def save(prepared: Prepared, out_dir: Path) -> None:
    """Write atomically: a reader never sees a half-written dataset at `out_dir`."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".data-", dir=out_dir.parent))
    prepared.splits.save_to_disk(str(tmp / "dataset"))
    (tmp / STATS_FILE).write_text(json.dumps(prepared.stats, indent=2))
    old = out_dir.with_name(out_dir.name + ".old")
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_prepared(out_dir: Path) -> Prepared:
    """Read what `save` wrote; a clear error if the preprocess stage has not run."""
    from tuneship.errors import TuneshipError

    if not (out_dir / STATS_FILE).is_file():
        raise TuneshipError(f"no processed dataset at {out_dir}: run the preprocess stage first")
    splits = datasets.load_from_disk(str(out_dir / "dataset"))
    return Prepared(splits, json.loads((out_dir / STATS_FILE).read_text()))
