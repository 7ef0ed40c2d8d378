"""One error type for everything a user can get wrong, and a guard that prints it cleanly."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class TuneshipError(Exception):
    """A problem with the user's data, config or environment, with a message that says what to do."""


def exit_on_user_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a pipeline entry point: a `TuneshipError` becomes one clear line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TuneshipError as err:
            log.error("%s", err)
            print(f"tuneship: error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
