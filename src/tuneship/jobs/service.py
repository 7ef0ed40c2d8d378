"""What the API does, without HTTP: files and jobs of one owner, limits, the queue.

Every method takes the caller's `owner`; another owner's ids are answered exactly like ids that
do not exist (404). Methods raise `ApiError` for anything the caller can fix.
"""

from __future__ import annotations

from tuneship.jobs.blobs import Blobs
from tuneship.jobs.config import JobsSettings
from tuneship.jobs.errors import ApiError, not_found
from tuneship.jobs.queue import Queue
from tuneship.jobs.requests import parse, registered_name, seed_of
from tuneship.jobs.store import ACTIVE, FINAL, File, Job, Store, new_id
from tuneship.jobs.validate import KINDS, FileProblem, validate
from tuneship.jobs.views import checkpoint_view, event_view, file_view, job_view, page

PURPOSE = "fine-tune"
TASK_NEEDS = {"causal_lm": "chat 'messages' rows or 'prompt'/'completion' rows",
              "classification": "'text'/'label' rows (CSV or JSONL)"}


class JobsService:
    def __init__(self, settings: JobsSettings, store: Store | None = None,
                 queue: Queue | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.database_url)
        self.store.create_all()
        self.store.sync_keys((k.owner, k.sha256) for k in settings.keys)
        self.blobs = Blobs(settings.files_dir)
        self.queue = queue or Queue(settings)

    # --- files -------------------------------------------------------------------------------

    def upload(self, owner: str, filename: str, purpose: str, data: bytes) -> dict:
        """Validate at once, then keep the bytes (SHA-256 recorded) and the file's row."""
        if purpose != PURPOSE:
            raise ApiError(400, f"purpose must be {PURPOSE!r} here, got {purpose!r}", param="purpose")
        try:
            checked = validate(data, filename, self.settings.limits)
        except FileProblem as err:
            raise ApiError(400, f"{filename}: {err}", param="file", code="invalid_file") from None
        file_id = new_id("file")
        digest = self.blobs.put(file_id, data)
        row = File(id=file_id, owner_id=owner, filename=filename, purpose=purpose, bytes=len(data),
                   sha256=digest, kind=checked.kind, rows=len(checked.rows))
        if not self.store.add_file(row, self.settings.limits.max_stored_bytes):
            self.blobs.delete(file_id)
            raise ApiError(429, f"storing {len(data):,} more bytes would pass your limit of "
                           f"{self.settings.limits.max_stored_bytes:,}: delete files first",
                           code="storage_limit_exceeded")
        return file_view(row)

    def files(self, owner: str, after: str | None, limit: int, order: str,
              purpose: str | None) -> dict:
        rows = self.store.list_files(owner, purpose)
        return page(rows[::-1] if order == "desc" else rows, file_view, after, limit)

    def file(self, owner: str, file_id: str) -> File:
        row = self.store.get_file(owner, file_id)
        if row is None:
            raise not_found("file", file_id, "file_id")
        return row

    def content(self, owner: str, file_id: str) -> bytes:
        return self.blobs.get(self.file(owner, file_id).id)

    def delete_file(self, owner: str, file_id: str) -> dict:
        self.file(owner, file_id)
        if using := self.store.jobs_using(file_id):
            raise ApiError(409, f"{file_id} is the training file of {using[0].id} "
                           f"({using[0].status}): cancel the job or wait for it to end",
                           param="file_id", code="file_in_use")
        self.store.delete_file(owner, file_id)
        self.blobs.delete(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # --- jobs --------------------------------------------------------------------------------

    def create_job(self, owner: str, body: object) -> dict:
        """validating_files → queued (the file was checked at upload: its kind must fit the
        base model's task), then handed to the queue."""
        request = parse(body, self.settings)
        entry = self.settings.models[request.model]
        training = self.store.get_file(owner, request.training_file)
        if training is None:
            raise not_found("file", request.training_file, "training_file")
        if KINDS[training.kind] != entry.task:
            raise ApiError(400, f"{training.id} holds {training.kind} rows; {request.model} "
                           f"fine-tunes a {entry.task} model and needs {TASK_NEEDS[entry.task]}",
                           param="training_file", code="invalid_training_file")
        job_id = new_id("ftjob")
        row = Job(id=job_id, owner_id=owner, model=request.model, task=entry.task,
                  training_file=training.id, status="validating_files", suffix=request.suffix,
                  seed=seed_of(request), meta=request.metadata,
                  hyperparameters=request.hyper().model_dump(),
                  registered_model=registered_name(request.model, request.suffix, job_id))
        if not self.store.add_job(row, self.settings.limits.max_queued_jobs):
            raise ApiError(429, f"you have {self.settings.limits.max_queued_jobs} jobs waiting "
                           "already (the limit): wait for them to start or cancel some",
                           code="queued_jobs_limit")
        self.store.add_event(job_id, f"Validating training file: {training.id}")
        if self.store.transition(job_id, ["validating_files"], "queued"):
            self.store.add_event(job_id, "Files validated, moving job to queued state")
            self.queue.enqueue(job_id)
        return job_view(self.job(owner, job_id))

    def jobs(self, owner: str, after: str | None, limit: int, metadata: dict[str, str]) -> dict:
        if metadata:  # filtered in Python (a JSON column): reads every job of the owner
            rows = [r for r in self.store.list_jobs(owner)
                    if all((r.meta or {}).get(k) == v for k, v in metadata.items())]
            return page(rows, job_view, after, limit)
        found = self.store.jobs_page(owner, after, limit)
        if found is None:
            raise ApiError(400, f"after: no such id {after!r} in this list", param="after")
        rows, more = found
        return {"object": "list", "data": [job_view(r) for r in rows], "has_more": more,
                "first_id": rows[0].id if rows else None, "last_id": rows[-1].id if rows else None}

    def job(self, owner: str, job_id: str) -> Job:
        row = self.store.job(job_id, owner)
        if row is None:
            raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
        return row

    def cancel(self, owner: str, job_id: str) -> dict:
        """Waiting jobs never start; a running one is stopped by its worker (process tree)."""
        row = self.job(owner, job_id)
        if row.status in FINAL:
            raise ApiError(400, f"{job_id} is already {row.status}: only a job that has not "
                           "ended can be cancelled", param="fine_tuning_job_id", code="job_ended")
        if self.store.transition(job_id, ACTIVE, "cancelled"):
            self.store.add_event(job_id, "Job cancelled by the user")
        return job_view(self.job(owner, job_id))

    def events(self, owner: str, job_id: str, after: str | None, limit: int) -> dict:
        self.job(owner, job_id)
        return page(self.store.events(job_id), event_view, after, limit)

    def checkpoints(self, owner: str, job_id: str, after: str | None, limit: int) -> dict:
        self.job(owner, job_id)
        return page(self.store.checkpoints(job_id), lambda c: checkpoint_view(c, job_id), after,
                    limit)
