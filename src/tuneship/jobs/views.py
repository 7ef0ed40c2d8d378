"""Rows of the store → the JSON objects OpenAI's API returns (and its client parses)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tuneship.jobs.errors import ApiError
from tuneship.jobs.store import Checkpoint, Event, File, Job


def file_view(row: File) -> dict[str, Any]:
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": row.created_at,
            "filename": row.filename, "purpose": row.purpose, "status": "processed",
            "status_details": None, "expires_at": None, "sha256": row.sha256,
            "rows": row.rows, "kind": row.kind}


def job_view(row: Job) -> dict[str, Any]:
    error = ({"code": row.error_code, "message": row.error_message, "param": row.error_param}
             if row.error_code else None)
    return {"id": row.id, "object": "fine_tuning.job", "created_at": row.created_at,
            "error": error, "fine_tuned_model": row.fine_tuned_model,
            "finished_at": row.finished_at, "hyperparameters": row.hyperparameters,
            "model": row.model, "organization_id": row.owner_id, "result_files": [],
            "seed": row.seed, "status": row.status, "trained_tokens": row.trained_tokens,
            "training_file": row.training_file, "validation_file": None,
            "estimated_finish": None, "integrations": [], "metadata": row.meta,
            "method": {"type": "supervised", "supervised": {"hyperparameters": row.hyperparameters}},
            "suffix": row.suffix, "user_provided_suffix": row.suffix}


def event_view(row: Event) -> dict[str, Any]:
    return {"id": row.id, "object": "fine_tuning.job.event", "created_at": row.created_at,
            "level": row.level, "message": row.message, "data": row.data, "type": row.type}


def checkpoint_view(row: Checkpoint, job_id: str) -> dict[str, Any]:
    return {"id": row.id, "object": "fine_tuning.job.checkpoint", "created_at": row.created_at,
            "fine_tuned_model_checkpoint": row.name, "fine_tuning_job_id": job_id,
            "metrics": row.metrics, "step_number": row.step}


def page(rows: Sequence[Any], view: Callable[[Any], dict], after: str | None, limit: int) -> dict:
    """A cursor page: the `limit` rows after the row with id `after` (in the given order)."""
    start = 0
    if after:
        ids = [r.id for r in rows]
        if after not in ids:
            raise ApiError(400, f"after: no such id {after!r} in this list", param="after")
        start = ids.index(after) + 1
    chunk = rows[start:start + limit]
    return {"object": "list", "data": [view(r) for r in chunk],
            "has_more": start + limit < len(rows),
            "first_id": chunk[0].id if chunk else None,
            "last_id": chunk[-1].id if chunk else None}
