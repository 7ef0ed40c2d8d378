"""The local executor's queue: huey on SQLite (as MLflow 3 runs its own server jobs).

The store is the source of truth; the queue only carries job ids in submission order. A task
whose job is no longer `queued` (cancelled, or a duplicate after a restart) does nothing, so the
worker may re-enqueue freely when it starts (see `worker.recover`).
"""

from __future__ import annotations

from pathlib import Path

from huey import SqliteHuey

from tuneship.jobs.config import JobsSettings

TASK_NAME = "tuneship.run_job"


class Queue:
    def __init__(self, settings: JobsSettings) -> None:
        path = Path(settings.executor.queue_db)
        path.parent.mkdir(parents=True, exist_ok=True)
        # strict_fifo: SQLite AUTOINCREMENT ids, so jobs start in the order they were queued.
        self.huey = SqliteHuey(name="tuneship-jobs", filename=str(path), strict_fifo=True,
                               results=False, timeout=30)
        self.settings = settings

        def run_job(job_id: str) -> None:
            """Runs in the worker (a consumer thread); the job itself runs in its own process
            (on this machine, or on a Ray node with `executor.kind: ray`)."""
            if settings.executor.kind == "ray":
                from tuneship.jobs.ray_executor import execute
            else:
                from tuneship.jobs.worker import execute

            execute(settings, job_id)

        self._task = self.huey.task(name=TASK_NAME)(run_job)

    def enqueue(self, job_id: str) -> None:
        self._task(job_id)

    def pending(self) -> int:
        return self.huey.pending_count()

    def flush(self) -> None:
        self.huey.flush()

