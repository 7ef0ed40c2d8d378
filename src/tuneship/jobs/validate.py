"""Check an uploaded training file at once; a problem names the line and what is wrong.

Three kinds of rows, one kind per file:
- `chat` (JSONL): `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`
  with a user message and an assistant message last (the response to learn);
- `prompt_completion` (JSONL): `{"prompt": "...", "completion": "..."}`;
- `classification` (JSONL, or CSV when the name ends in `.csv`): `text` and `label`, at least
  two distinct labels.
The first two train a causal LM, the third a classifier.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from tuneship.jobs.config import Limits

KINDS = {"chat": "causal_lm", "prompt_completion": "causal_lm", "classification": "classification"}
ROLES = ("system", "user", "assistant")
EXPECTED = ("expected a 'messages' list (chat), 'prompt' and 'completion', or 'text' and 'label' "
            "(classification)")


class FileProblem(ValueError):
    """A training file that cannot be used; `line` is 1-based (None: the whole file)."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


@dataclass(frozen=True)
class Validated:
    kind: str                  # chat | prompt_completion | classification
    rows: list[dict[str, Any]]  # the parsed rows, in file order

    @property
    def task(self) -> str:
        return KINDS[self.kind]


def validate(data: bytes, filename: str, limits: Limits) -> Validated:
    """Parse and check the whole file against the limits; raise `FileProblem` on the first issue."""
    if len(data) > limits.max_file_bytes:
        raise FileProblem(f"the file is {len(data):,} bytes, over the limit of "
                          f"{limits.max_file_bytes:,} bytes")
    text = _decode(data)
    if not text.strip():
        raise FileProblem("the file is empty")
    lines = text.splitlines()
    if len(lines) > limits.max_lines:
        raise FileProblem(f"the file has {len(lines):,} lines, over the limit of {limits.max_lines:,}")
    for number, line in enumerate(lines, 1):
        if len(line) > limits.max_line_chars:
            raise FileProblem(f"{len(line):,} characters, over the limit of "
                              f"{limits.max_line_chars:,} per line", number)
    kind, rows = _csv(text) if filename.lower().endswith(".csv") else _jsonl(lines)
    if len(rows) < limits.min_lines:
        raise FileProblem(f"the file has {len(rows)} example(s); at least {limits.min_lines} "
                          "are needed")
    if kind == "classification" and len({label_text(r["label"]) for _, r in rows}) < 2:
        raise FileProblem(f"every row has the label {label_text(rows[0][1]['label'])!r}: a "
                          "classifier needs at least 2 distinct labels")
    return Validated(kind, [row for _, row in rows])


def label_text(label: str | int | float) -> str:
    """A label as the pipeline reads it: `1`, `1.0` and `"1"` are the same label."""
    return str(int(label)) if isinstance(label, float) else str(label).strip()


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise FileProblem(f"not valid UTF-8 (byte {err.start}); re-encode the file as UTF-8",
                          line) from None


def _jsonl(lines: list[str]) -> tuple[str, list[tuple[int, dict]]]:
    kind, first, rows = None, 0, []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise FileProblem(f"not valid JSON ({err.msg} at column {err.colno})", number) from None
        if not isinstance(row, dict):
            raise FileProblem(f"a JSON {type(row).__name__}, not an object; {EXPECTED}", number)
        this = _kind(row, number)
        if kind is None:
            kind, first = this, number
        elif this != kind:
            raise FileProblem(f"a {this} row in a file of {kind} rows (line {first}): use one "
                              "format per file", number)
        CHECKS[this](row, number)
        rows.append((number, row))
    return kind or "chat", rows


def _kind(row: dict, line: int) -> str:
    if "messages" in row:
        return "chat"
    if "prompt" in row or "completion" in row:
        return "prompt_completion"
    if "text" in row or "label" in row:
        return "classification"
    raise FileProblem(f"{EXPECTED}; got field(s) {sorted(row)}", line)


def _check_chat(row: dict, line: int) -> None:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise FileProblem("'messages' must be a non-empty list of {role, content} objects", line)
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise FileProblem(f"{where} is not an object", line)
        if message.get("role") not in ROLES:
            raise FileProblem(f"{where}.role is {message.get('role')!r}; expected one of "
                              f"{list(ROLES)}", line)
        if not isinstance(message.get("content"), str) or not message["content"].strip():
            raise FileProblem(f"{where}.content must be a non-empty string", line)
    if not any(m["role"] == "user" for m in messages):
        raise FileProblem("no user message", line)
    if messages[-1]["role"] != "assistant":
        raise FileProblem("the last message must be the assistant's (the response to learn)", line)


def _check_prompt_completion(row: dict, line: int) -> None:
    for field in ("prompt", "completion"):
        _text_field(row, field, line)


def _check_classification(row: dict, line: int) -> None:
    _text_field(row, "text", line)
    if "label" not in row:
        raise FileProblem("'label' is missing", line)
    label = row["label"]
    whole = isinstance(label, float) and label.is_integer()
    if not whole and (isinstance(label, bool) or not isinstance(label, str | int)
                      or (isinstance(label, str) and not label.strip())):
        raise FileProblem(f"'label' must be a non-empty string or an integer, got {label!r}", line)


def _text_field(row: dict, field: str, line: int) -> None:
    if field not in row:
        raise FileProblem(f"'{field}' is missing", line)
    if not isinstance(row[field], str) or not row[field].strip():
        raise FileProblem(f"'{field}' must be a non-empty string, got {row[field]!r}", line)


CHECKS = {"chat": _check_chat, "prompt_completion": _check_prompt_completion,
          "classification": _check_classification}


def _csv(text: str) -> tuple[str, list[tuple[int, dict]]]:
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    if "text" not in header or "label" not in header:
        raise FileProblem(f"the CSV header is {header}; expected columns 'text' and 'label'", 1)
    rows = []
    try:
        for row in reader:
            line = reader.line_num
            if None in row or None in row.values():
                more = "more" if None in row else "fewer"
                raise FileProblem(f"{more} fields than the header's {len(header)}", line)
            clean = {"text": row["text"], "label": row["label"].strip()}
            if not clean["label"]:
                raise FileProblem("'label' is empty", line)
            _text_field(clean, "text", line)
            rows.append((line, clean))
    except csv.Error as err:
        raise FileProblem(f"not valid CSV ({err})", reader.line_num) from None
    return "classification", rows
