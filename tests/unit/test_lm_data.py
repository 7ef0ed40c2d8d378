"""Causal-LM data: chunking, splitting without leakage, packing, chat rendering, bad inputs.

A byte-level tokenizer with a ChatML template is built in memory (no files, no hub): one token
per byte, so decoded blocks can be looked up in the split texts.
"""

import json
import random
import string

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tuneship.config import DataConfig
from tuneship.data.columns import column
from tuneship.errors import TuneshipError
from tuneship.tasks.causal_lm.data import (
    IGNORE,
    chunk_text,
    encode_instruction,
    pack,
    prepare,
    split_chunks,
)

pytestmark = pytest.mark.unit
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab |= {"<|im_start|>": len(vocab), "<|im_end|>": len(vocab) + 1}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


def speeches(n: int) -> str:
    """`n` speeches of random letters: any 32-character span occurs once in the text."""
    rng = random.Random(0)
    line = lambda: "".join(rng.choice(string.ascii_lowercase + "  ") for _ in range(40))  # noqa: E731
    return "\n\n".join(f"SPEAKER {i}:\n{line()}" for i in range(n))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(speeches(400))
    return path


def corpus_cfg(path, **kw) -> DataConfig:
    base = {"name": "c", "source": str(path), "format": "text", "label_column": None,
            "chunk_chars": 300, "validation_size": 0.1, "test_size": 0.1, "block_size": 32}
    return DataConfig(**(base | kw))


def test_chunks_cut_at_blank_lines_and_rejoin():
    text = speeches(50)
    chunks = chunk_text(text, 200)
    assert "\n\n".join(chunks) == text
    assert all(len(c) >= 200 for c in chunks[:-1])
    assert all(c.startswith("SPEAKER") for c in chunks)  # never cut inside a speech


def test_split_is_deterministic_disjoint_and_ordered():
    chunks = [f"chunk {i}" for i in range(100)]
    a = split_chunks(chunks, 0.1, 0.2, seed=1)
    assert a == split_chunks(chunks, 0.1, 0.2, seed=1)
    assert a != split_chunks(chunks, 0.1, 0.2, seed=2)
    assert (len(a["train"]), len(a["validation"]), len(a["test"])) == (70, 10, 20)
    assert sorted(sum(a.values(), [])) == sorted(chunks)  # every chunk, exactly once
    for part in a.values():
        assert part == sorted(part, key=chunks.index)  # corpus order kept
    with pytest.raises(TuneshipError, match="too few for train/validation/test"):
        split_chunks(chunks[:2], 0.1, 0.1, seed=1)


def test_pack_drops_the_remainder():
    blocks = pack(list(range(10)), 4)
    assert blocks == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert pack(list(range(3)), 4) == []
    with pytest.raises(TuneshipError, match="at least 2 tokens"):
        pack([1, 2, 3], 1)


def test_corpus_blocks_stay_inside_their_split(corpus, tokenizer):
    prepared = prepare(corpus_cfg(corpus), tokenizer, seed=0)
    splits, stats = prepared.splits, prepared.stats
    assert stats["task"] == "causal_lm" and stats["kind"] == "corpus"
    assert all(stats["rows"][s] > 0 for s in ("train", "validation", "test"))
    texts = {}
    for name in ("train", "validation", "test"):
        blocks = column(splits[name], "input_ids")
        assert {len(b) for b in blocks} == {32}
        texts[name] = [tokenizer.decode(b) for b in blocks]
    # Byte tokens: a decoded block is a verbatim span of its own split's text (its chunks joined
    # by blank lines) and, the letters being random, of no other split's.
    parts = split_chunks(chunk_text(corpus.read_text(), 300), 0.1, 0.1, seed=0)
    own = {name: "\n\n".join(chunks) for name, chunks in parts.items()}
    for name, blocks in texts.items():
        others = [own[o] for o in own if o != name]
        assert all(b in own[name] and not any(b in o for o in others) for b in blocks), name


def test_fingerprint_is_stable_and_tracks_settings(corpus, tokenizer):
    first = prepare(corpus_cfg(corpus), tokenizer, seed=0).stats["fingerprint"]
    assert prepare(corpus_cfg(corpus), tokenizer, seed=0).stats["fingerprint"] == first
    assert prepare(corpus_cfg(corpus, block_size=16), tokenizer,
                   seed=0).stats["fingerprint"] != first
    assert prepare(corpus_cfg(corpus), tokenizer, seed=1).stats["fingerprint"] != first


@pytest.mark.parametrize(
    ("kw", "content", "message"),
    [
        ({"block_size": None}, None, "data.block_size must be set"),
        ({"block_size": 100_000}, None, "fewer than data.block_size=100000"),
        ({}, "", "is empty"),
        ({}, "  \n\n  ", "is empty"),
        ({"chunk_chars": 10**9}, None, "too few for train/validation/test"),
    ],
    ids=["no-block-size", "block-too-big", "empty", "blank", "one-chunk"],
)
def test_bad_corpus_settings_are_clear_errors(corpus, tokenizer, kw, content, message):
    if content is not None:
        corpus.write_text(content)
    with pytest.raises(TuneshipError, match=message):
        prepare(corpus_cfg(corpus, **kw), tokenizer, seed=0)


def test_missing_corpus_file(tmp_path, tokenizer):
    with pytest.raises(TuneshipError, match="data file not found"):
        prepare(corpus_cfg(tmp_path / "nope.txt"), tokenizer, seed=0)


def test_instruction_labels_cover_only_the_response(tokenizer):
    enc = encode_instruction(tokenizer, "Say hi", "Hello there.", max_length=256)
    ids, labels = enc["input_ids"], enc["labels"]
    first = next(i for i, label in enumerate(labels) if label != IGNORE)
    assert all(label == IGNORE for label in labels[:first])
    assert labels[first:] == ids[first:]
    assert tokenizer.decode(ids[:first]).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(ids[first:]) == "Hello there.<|im_end|>\n"  # learns to stop
    assert encode_instruction(tokenizer, "x" * 300, "y", max_length=64) is None


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def instr_cfg(path, **kw) -> DataConfig:
    base = {"name": "i", "source": str(path), "format": "jsonl", "label_column": None,
            "validation_size": 0.1, "test_size": 0.2, "max_length": 128}
    return DataConfig(**(base | kw))


def test_instructions_split_dedupe_and_keep_text(tmp_path, tokenizer):
    rows = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(30)]
    rows += [{"prompt": "Question 3?", "response": "Another answer."},  # duplicate prompt
             {"prompt": "", "response": "orphan"}]
    prepared = prepare(instr_cfg(write_rows(tmp_path / "d.jsonl", rows)), tokenizer, seed=0)
    stats, splits = prepared.stats, prepared.splits
    assert stats["kind"] == "instructions"
    assert (stats["dropped_duplicates"], stats["dropped_empty"]) == (1, 1)
    assert stats["rows"] == {"train": 21, "validation": 3, "test": 6}
    prompts = {name: set(column(s, "prompt")) for name, s in splits.items()}
    assert not prompts["train"] & (prompts["test"] | prompts["validation"])
    assert {"prompt", "response", "input_ids", "labels"} <= set(splits["test"].column_names)


def test_missing_prompt_or_response_field(tmp_path, tokenizer):
    path = write_rows(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}] * 10)
    with pytest.raises(TuneshipError, match=r"field\(s\) \['prompt', 'response'\] not found"):
        prepare(instr_cfg(path), tokenizer, seed=0)
    with pytest.raises(TuneshipError, match=r"field\(s\) \['response'\] not found"):
        prepare(instr_cfg(path, prompt_column="question"), tokenizer, seed=0)


def test_empty_instruction_file_and_no_chat_template(tmp_path, tokenizer):
    with pytest.raises(TuneshipError, match="holds no rows|could not read"):
        prepare(instr_cfg(write_rows(tmp_path / "e.jsonl", [])), tokenizer, seed=0)
    plain = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer,
                                eos_token="<|im_end|>")
    path = write_rows(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}] * 5)
    with pytest.raises(TuneshipError, match="chat template"):
        prepare(instr_cfg(path), plain, seed=0)
