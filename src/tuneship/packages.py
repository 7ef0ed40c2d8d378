"""Files shipped inside installed packages (`pkg:<module>/<sub/path>`), found without importing
the package (some model packages import heavy extras)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tuneship.errors import TuneshipError


def package_file(spec: str) -> str:
    """The file or folder `pkg:<module>/<sub/path>` names inside an installed package."""
    module, _, sub = spec.removeprefix("pkg:").partition("/")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise TuneshipError(
            f"model package '{module}' is not installed (needed for '{spec}'); run `make setup`"
        )
    path = Path(list(found.submodule_search_locations)[0]) / sub
    if not path.exists():
        raise TuneshipError(f"'{spec}' points to {path}, which does not exist")
    return str(path)
