"""An `on_model_ready` hook for tests/integration/test_jobs.py: slow on purpose, so a worker that
stops the job's process as soon as it reads `succeeded` leaves no marker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def slow_ready(settings: Any, job: dict[str, Any]) -> None:
    """Wait 2 s, then write `<state_dir>/ready/<job id>` holding the model's name."""
    time.sleep(2)
    folder = Path(settings.state_dir) / "ready"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / job["id"]).write_text(job["fine_tuned_model"] or "")
