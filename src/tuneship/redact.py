"""Keep secrets out of MLflow: passwords in URIs and values of secret-looking keys are masked."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_URI_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^/:@\s]+:)(?P<secret>[^@\s/]+)(?=@)")
_SECRET_KEY = re.compile(r"(^|[_.-])(password|passwd|secret|token|api[_-]?key|credentials?)$", re.IGNORECASE)


def redact_text(text: str) -> str:
    """`postgresql://user:pw@host/db` → `postgresql://user:***@host/db`."""
    return _URI_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


def redact(value: Any, key: str = "") -> Any:
    """A copy of a nested dict/list/str with secrets masked (by key name or URI password)."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if _SECRET_KEY.search(key) and value not in (None, ""):
        return MASK
    return redact_text(value) if isinstance(value, str) else value
