"""Causal-LM data: a plain-text corpus or prompt/response rows → token datasets.

Two input kinds, told apart by `data.format` (or the file suffix):
- **corpus** (`text`/`.txt`): cut at blank lines into contiguous chunks of ~`data.chunk_chars`,
  dealt to train/validation/test with a seeded shuffle (a chunk never straddles two splits), then
  each split's text is tokenized and packed into `data.block_size`-token blocks (the remainder is
  dropped). Every token of a block is a target.
- **instructions** (`json`/`jsonl`/`csv`/`parquet` with `prompt`/`response` columns): each row is
  rendered with the tokenizer's chat template; only the response tokens (through the end-of-turn
  token) are targets, the prompt's labels are -100. Rows are deduplicated by prompt and split with
  a seeded shuffle. The test split keeps `prompt`/`response` for generation metrics.

The splits are fingerprinted with the same function over their texts as classification data.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import datasets
from transformers import PreTrainedTokenizerBase

from tuneship.config import DataConfig
from tuneship.data import load
from tuneship.data.columns import column
from tuneship.data.fingerprint import fingerprint
from tuneship.errors import TuneshipError
from tuneship.workdir import Prepared

IGNORE = -100  # label of a token that is not a target (prompt, padding)
SPLITS = ("train", "validation", "test")
_PARAGRAPH = re.compile(r"\n\s*\n")


def prepare(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int,
            cache_dir: str | None = None) -> Prepared:
    """Read, split and tokenize `cfg.source`; raise `TuneshipError` on bad data or settings."""
    fmt = load.infer_format(cfg.source, cfg.format)
    if fmt in ("text", "txt"):
        return prepare_corpus(cfg, tokenizer, seed)
    return prepare_instructions(cfg, tokenizer, seed, cache_dir)


# --- corpus -----------------------------------------------------------------------------------


def read_corpus(source: str) -> str:
    """The whole text file; a clear error if it is missing, not UTF-8 or blank."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise TuneshipError(f"data file not found: {path} (set data.source or TUNESHIP_DATA_DIR)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TuneshipError(f"{path} is not valid UTF-8 (byte {err.start}): re-encode it") from None
    if not text.strip():
        raise TuneshipError(f"{path} is empty: a corpus needs text to train on")
    return text.replace("\r\n", "\n")


def chunk_text(text: str, chunk_chars: int) -> list[str]:
    """Contiguous chunks of at least `chunk_chars` characters, cut only at blank lines.

    Joining the chunks with blank lines gives back the text (up to whitespace at the cuts).
    """
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in _PARAGRAPH.split(text.strip()):
        current.append(paragraph)
        size += len(paragraph) + 2
        if size >= chunk_chars:
            chunks.append("\n\n".join(current))
            current, size = [], 0
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def split_chunks(chunks: list[str], validation_size: float, test_size: float,
                 seed: int) -> dict[str, list[str]]:
    """Deal whole chunks to the splits with a seeded shuffle; each split keeps corpus order."""
    n_test = max(1, round(len(chunks) * test_size))
    n_val = max(1, round(len(chunks) * validation_size))
    if n_test + n_val >= len(chunks):
        raise TuneshipError(
            f"the corpus gives only {len(chunks)} chunk(s) of ~data.chunk_chars characters: too "
            "few for train/validation/test; lower data.chunk_chars or use a longer corpus")
    order = list(range(len(chunks)))
    random.Random(seed).shuffle(order)
    picked = {"test": order[:n_test], "validation": order[n_test:n_test + n_val],
              "train": order[n_test + n_val:]}
    return {name: [chunks[i] for i in sorted(picked[name])] for name in SPLITS}


def pack(ids: list[int], block_size: int) -> list[list[int]]:
    """Cut a token stream into consecutive blocks of `block_size`; drop the short remainder."""
    if block_size < 2:
        raise TuneshipError(f"data.block_size={block_size}: a block needs at least 2 tokens")
    return [ids[i:i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]


def prepare_corpus(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> Prepared:
    """Corpus → contiguous chunk splits → packed token blocks."""
    if cfg.block_size is None:
        raise TuneshipError("data.block_size must be set for a text corpus (e.g. 256)")
    text = read_corpus(cfg.source)
    parts = split_chunks(chunk_text(text, cfg.chunk_chars), cfg.validation_size, cfg.test_size,
                         seed)
    texts = {name: datasets.Dataset.from_dict({"text": chunks}) for name, chunks in parts.items()}
    digest = fingerprint(datasets.DatasetDict(texts), extra=_extra(cfg, tokenizer, "corpus"))
    blocks, tokens = {}, {}
    for name, chunks in parts.items():
        ids = tokenizer("\n\n".join(chunks), add_special_tokens=False)["input_ids"]
        tokens[name] = len(ids)
        blocks[name] = pack(ids, cfg.block_size)
        if not blocks[name]:
            raise TuneshipError(
                f"the {name} split has {len(ids)} tokens, fewer than data.block_size="
                f"{cfg.block_size}: lower data.block_size or raise data.{_size_key(name)}")
    if cfg.max_train_samples:
        rng = random.Random(seed)
        keep = sorted(rng.sample(range(len(blocks["train"])),
                                 min(cfg.max_train_samples, len(blocks["train"]))))
        blocks["train"] = [blocks["train"][i] for i in keep]
    splits = datasets.DatasetDict({
        name: datasets.Dataset.from_dict({"input_ids": rows,
                                          "length": [len(r) for r in rows]})
        for name, rows in blocks.items()})
    stats = _stats(cfg, digest, "corpus", splits, tokenizer,
                   tokens=tokens, chars={k: sum(map(len, v)) for k, v in parts.items()},
                   chunks={k: len(v) for k, v in parts.items()})
    return Prepared(splits, stats)


def _size_key(split: str) -> str:
    return {"test": "test_size", "validation": "validation_size"}.get(split, "chunk_chars")


# --- instructions -----------------------------------------------------------------------------


def encode_instruction(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str,
                       max_length: int) -> dict[str, list[int]] | None:
    """Chat-template one exchange; labels are -100 on the prompt. None if the prompt fills
    `max_length` (nothing would be left to learn)."""
    user = [{"role": "user", "content": prompt}]
    head = _chat_ids(tokenizer, user, add_generation_prompt=True)
    full = _chat_ids(tokenizer, [*user, {"role": "assistant", "content": response}])
    if full[:len(head)] != head:
        raise TuneshipError("the chat template renders the prompt differently with and without "
                            "a response: cannot tell which tokens are the response")
    full = full[:max_length]
    if len(head) >= len(full):
        return None
    return {"input_ids": full, "labels": [IGNORE] * len(head) + full[len(head):]}


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict], **kwargs) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    return list(out["input_ids"])


def prepare_instructions(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int,
                         cache_dir: str | None = None) -> Prepared:
    """Prompt/response rows → deduplicated, seeded splits → chat-templated, response-only labels."""
    if not tokenizer.chat_template:
        raise TuneshipError("instruction data needs a tokenizer with a chat template; "
                            "set model.tokenizer to one that has it")
    raw = load.load_raw(cfg.source, cfg.format, cache_dir)
    cols = (cfg.prompt_column, cfg.response_column)
    missing = [c for c in cols if c not in raw.column_names]
    if missing:
        raise TuneshipError(f"{cfg.source}: field(s) {missing} not found; the rows have "
                            f"{raw.column_names} (set data.prompt_column / data.response_column)")
    rows, seen, dropped = [], set(), {"dropped_empty": 0, "dropped_duplicates": 0,
                                      "dropped_too_long": 0}
    for prompt, response in zip(column(raw, cols[0]), column(raw, cols[1]), strict=True):
        prompt, response = (prompt or "").strip(), (response or "").strip()
        if not prompt or not response:
            dropped["dropped_empty"] += 1
        elif cfg.drop_duplicates and prompt in seen:
            dropped["dropped_duplicates"] += 1
        else:
            seen.add(prompt)
            rows.append((prompt, response))
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(len(rows) * cfg.test_size))
    n_val = max(1, round(len(rows) * cfg.validation_size))
    if n_test + n_val >= len(rows):
        raise TuneshipError(f"{cfg.source}: {len(rows)} usable row(s) are too few for "
                            "train/validation/test splits")
    picked = {"test": order[:n_test], "validation": order[n_test:n_test + n_val],
              "train": order[n_test + n_val:]}
    if cfg.max_train_samples:
        picked["train"] = picked["train"][:cfg.max_train_samples]
    texts, splits = {}, {}
    for name in SPLITS:
        part = [rows[i] for i in sorted(picked[name])]
        texts[name] = datasets.Dataset.from_dict({"text": [f"{p}\x1f{r}" for p, r in part]})
        encoded = [(p, r, encode_instruction(tokenizer, p, r, cfg.max_length)) for p, r in part]
        dropped["dropped_too_long"] += sum(e is None for *_, e in encoded)
        kept = [(p, r, e) for p, r, e in encoded if e is not None]
        if not kept:
            raise TuneshipError(f"the {name} split is empty after dropping prompts longer than "
                                f"data.max_length={cfg.max_length}")
        splits[name] = datasets.Dataset.from_dict({
            "prompt": [p for p, _, _ in kept], "response": [r for _, r, _ in kept],
            "input_ids": [e["input_ids"] for *_, e in kept],
            "labels": [e["labels"] for *_, e in kept],
            "length": [len(e["input_ids"]) for *_, e in kept]})
    digest = fingerprint(datasets.DatasetDict(texts), extra=_extra(cfg, tokenizer, "instructions"))
    splits = datasets.DatasetDict(splits)
    tokens = {name: sum(sum(t != IGNORE for t in labels) for labels in column(s, "labels"))
              for name, s in splits.items()}
    stats = _stats(cfg, digest, "instructions", splits, tokenizer, tokens=tokens,
                   rows_raw=len(raw), **dropped)
    return Prepared(splits, stats)


# --- shared -----------------------------------------------------------------------------------


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of the vocabulary: token ids mean the same only under the same vocabulary."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def _extra(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, kind: str) -> str:
    """What, besides the texts, decides the test set a perplexity is measured on."""
    return json.dumps({"task": "causal_lm", "kind": kind, "block_size": cfg.block_size,
                       "max_length": cfg.max_length, "tokenizer": tokenizer_digest(tokenizer)})


def _stats(cfg: DataConfig, digest: str, kind: str, splits: datasets.DatasetDict,
           tokenizer: PreTrainedTokenizerBase, tokens: dict, **extra) -> dict:
    return {"dataset": cfg.name, "source": cfg.source, "fingerprint": digest, "task": "causal_lm",
            "kind": kind, "block_size": cfg.block_size, "max_length": cfg.max_length,
            "tokenizer": tokenizer_digest(tokenizer),
            "rows": {name: len(s) for name, s in splits.items()},
            "tokens": tokens,  # per split (instructions: response tokens only)
            **extra}
