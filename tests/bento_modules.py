"""bentos/ modules imported as the services import them: siblings by their plain names."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENTOS = Path(__file__).resolve().parents[1] / "bentos"


def bento(name: str) -> ModuleType:
    """`bentos/<name>.py` as module `name` (with bentos/ on the path while it imports)."""
    sys.path.insert(0, str(BENTOS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENTOS))
