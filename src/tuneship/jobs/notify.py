"""The seam where the serving side learns that a job's model is registered and ready.

`model_ready` runs in the job's process right after the job turns `succeeded`. By default it
only logs; `on_model_ready: "module:function"` in conf/jobs/default.yaml names a function that
is called with `(settings, job)` (`job` as the API returns it: `fine_tuned_model`, `model`,
`result.model_uri`, ...) — e.g. one that tells the running LLM service to load the adapter.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from tuneship.errors import TuneshipError
from tuneship.jobs.config import JobsSettings

log = logging.getLogger(__name__)


def model_ready(settings: JobsSettings, job: dict[str, Any]) -> None:
    """Tell the serving side about `job["fine_tuned_model"]` (the configured hook, if any)."""
    log.info("model ready: %s (job %s)", job["fine_tuned_model"], job["id"])
    if settings.on_model_ready:
        hook(settings.on_model_ready)(settings, job)


def hook(target: str):
    """The function named `module:function`."""
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise TuneshipError(f"on_model_ready={target!r}: cannot load it ({err})") from None
