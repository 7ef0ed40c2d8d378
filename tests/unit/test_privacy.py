"""Personal data is masked before the inference table stores text (bentos/privacy.py)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
BENTOS = Path(__file__).resolve().parents[2] / "bentos"
sys.path.insert(0, str(BENTOS))
try:
    privacy = importlib.import_module("privacy")
finally:
    sys.path.remove(str(BENTOS))


@pytest.mark.parametrize(("text", "secret", "mask"), [
    ("write to jane.doe+news@example.co.uk today", "jane.doe+news@example.co.uk", "[EMAIL]"),
    ("card 4111 1111 1111 1111 expires soon", "4111 1111 1111 1111", "[CARD]"),
    ("card 4111-1111-1111-1111", "4111-1111-1111-1111", "[CARD]"),
    ("card 4111111111111111", "4111111111111111", "[CARD]"),
    ("call +1 (555) 123-4567 after six", "123-4567", "[PHONE]"),
    ("ring 020 7946 0958", "7946 0958", "[PHONE]"),
    ("account no. 12345678", "12345678", "[NUMBER]"),
    ("see https://example.com/u/42?token=x", "example.com", "[URL]"),
    ("or www.example.org/page", "example.org", "[URL]"),
    ("key sk-abc123def456ghi789jkl012mno345pqr", "sk-abc123def456ghi789jkl012mno345pqr",
     "[SECRET]"),
])
def test_personal_data_is_masked(text: str, secret: str, mask: str) -> None:
    masked = privacy.mask_pii(text)
    assert secret not in masked
    assert mask in masked


@pytest.mark.parametrize("text", [
    "a gripping, beautifully acted film", "10/10, two hours well spent",
    "released on 2024-01-15 for 3.50 in 1999", "top 100 films of the 90s",
])
def test_ordinary_text_is_kept(text: str) -> None:
    assert privacy.mask_pii(text) == text


def test_modes() -> None:
    text = "mail a@b.io"
    assert privacy.keep(text, privacy.PrivacyMode.FULL) == text
    assert privacy.keep(text, privacy.PrivacyMode.REDACTED) == "mail [EMAIL]"
    assert privacy.keep(text, privacy.PrivacyMode.STATS_ONLY) is None
    assert privacy.descriptors("ab 12") == {"chars": 5, "words": 2, "digits": 2}
