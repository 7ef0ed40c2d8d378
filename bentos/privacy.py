"""Personal data out of served text before it is stored (the inference table, feedback).

`mask_pii` replaces URLs, e-mail addresses, card-like digit sequences, phone numbers, long digit
runs and long secret-looking tokens with placeholders such as `[EMAIL]`. It is a pattern mask,
not named-entity recognition: names and addresses in prose stay. The pipeline's
`tuneship.redact` answers another question (secrets in configuration values logged to MLflow);
this one lives in bentos/ because the service image carries no `tuneship` package.

`PrivacyMode` names what the table keeps: `full` (text as served), `redacted` (masked text) or
`stats-only` (lengths and descriptors, no text).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import StrEnum


class PrivacyMode(StrEnum):
    FULL = "full"
    REDACTED = "redacted"
    STATS_ONLY = "stats-only"


_URL = re.compile(r"\b(?:[a-z][a-z0-9+.-]*://|www\.)[^\s<>\"']+", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.%+-]+@[\w-]+(?:\.[\w-]+)+\b")
# 13 to 19 digits, optionally in groups split by spaces or dashes (card numbers, IBAN tails).
_CARD = re.compile(r"(?<![\w])\d(?:[ -]?\d){12,18}(?![\w])")
# Digit groups with separators and an optional +country / (area) part, 7 to 15 digits in all.
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}"
                    r"(?:[\s.-]\d{2,4}){1,4}(?![\w])")
_ISO_DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}")
_DIGIT_RUN = re.compile(r"\d{6,}")
# API keys, bearer tokens: 32+ characters of letters, digits, `_`/`-` with letters and digits.
_TOKEN = re.compile(r"\b(?=[\w-]*\d)(?=[\w-]*[a-z])[\w-]{32,}\b", re.IGNORECASE)


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    if _ISO_DATE.fullmatch(text) or not 7 <= digits <= 15:
        return text
    return "[PHONE]"


_RULES: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (_URL, "[URL]"), (_EMAIL, "[EMAIL]"), (_TOKEN, "[SECRET]"), (_CARD, "[CARD]"),
    (_PHONE, _phone), (_DIGIT_RUN, "[NUMBER]"))


def mask_pii(text: str) -> str:
    """`text` with URLs, e-mails, secrets, card-like numbers, phones and long digit runs masked."""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def keep(text: str | None, mode: PrivacyMode) -> str | None:
    """What the table stores of `text` in `mode`: itself, its masked form, or nothing."""
    if text is None or mode is PrivacyMode.STATS_ONLY:
        return None
    return text if mode is PrivacyMode.FULL else mask_pii(text)


def descriptors(text: str) -> dict[str, int]:
    """Lengths kept in every mode: characters, words, and digits (no content)."""
    return {"chars": len(text), "words": len(text.split()),
            "digits": sum(c.isdigit() for c in text)}
