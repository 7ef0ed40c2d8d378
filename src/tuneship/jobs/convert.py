"""A validated upload → the JSONL file the pipeline reads (`data.source` of the job).

Causal LM rows become `prompt`/`response` (src/tuneship/tasks/causal_lm/data.py learns one
exchange per row): the last assistant message is the response; a lone user message is the prompt
as it is, longer conversations become `role: content` lines (system first). Classification rows
become `text`/`label` with the label as text.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneship.jobs.validate import Validated, label_text


def chat_to_pair(messages: list[dict]) -> dict[str, str]:
    """One chat example → the prompt/response pair the pipeline trains on."""
    *history, last = messages
    if len(history) == 1:
        prompt = history[0]["content"]
    else:
        prompt = "\n\n".join(f"{m['role']}: {m['content']}" for m in history)
    return {"prompt": prompt, "response": last["content"]}


def pipeline_row(kind: str, row: dict) -> dict[str, str]:
    if kind == "chat":
        return chat_to_pair(row["messages"])
    if kind == "prompt_completion":
        return {"prompt": row["prompt"], "response": row["completion"]}
    return {"text": row["text"], "label": label_text(row["label"])}


def write_pipeline_file(validated: Validated, path: Path) -> Path:
    """Write the rows as JSONL at `path` (atomically) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for row in validated.rows:
            out.write(json.dumps(pipeline_row(validated.kind, row), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
