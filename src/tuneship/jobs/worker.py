"""The local executor: a huey consumer (`executor.concurrency` threads) whose task starts one job
process (`tuneship.jobs.runner`, its own session), watches it and stops it on cancel. With
`executor.kind: ray` the same consumer runs `ray_executor.execute` instead (Ray runs the process).

Restart-safe: `serve` first recovers what a killed worker left — a job still `running` has its
stale process group killed and is queued again to resume from its last checkpoint (or fails
with the reason once it has used `executor.max_attempts` runs) — then re-enqueues every waiting
job in submission order. One worker per queue (a file lock says so).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from tuneship.errors import TuneshipError
from tuneship.jobs.config import JobsSettings
from tuneship.jobs.paths import JobPaths
from tuneship.jobs.queue import Queue
from tuneship.jobs.runner import PARENT_VAR
from tuneship.jobs.store import Job, Store
from tuneship.settings import project_root

log = logging.getLogger("tuneship.jobs.worker")
OUTCOME_GRACE_S = 60.0  # a process still running this long after its outcome is stopped


def serve(settings: JobsSettings) -> None:
    """Recover, then consume the queue until stopped (SIGINT/SIGTERM)."""
    lock = FileLock(f"{settings.executor.queue_db}.worker.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise TuneshipError(f"another jobs worker is running on {settings.executor.queue_db}: "
                            "run one worker per queue (raise executor.concurrency instead)") from None
    if settings.executor.kind == "ray":
        from tuneship.jobs.ray_executor import connect

        connect(settings, wait=False)  # a clear error now rather than in every job
    store = Store(settings.database_url)
    store.create_all()
    queue = Queue(settings)
    recover(settings, store, queue)
    consumer = queue.huey.create_consumer(workers=settings.executor.concurrency,
                                          worker_type="thread", periodic=False,
                                          initial_delay=0.2, max_delay=1.0)
    where = ("this machine" if settings.executor.kind == "local"
             else f"Ray at {settings.executor.ray_address}")
    log.info("jobs worker: %d at a time on %s, queue %s, store %s", settings.executor.concurrency,
             where, settings.executor.queue_db, redacted(settings.database_url))
    consumer.run()


def redacted(url: str) -> str:
    """A database URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def recover(settings: JobsSettings, store: Store, queue: Queue) -> None:
    """Interrupted jobs back to the queue (or failed), then every waiting job enqueued again."""
    queue.flush()
    for job in store.jobs_in(["running"]):
        if settings.executor.kind == "ray" and not job.pid:
            queue.enqueue(job.id)  # its run may still go on in Ray: the task attaches to it
            continue
        kill_group(job)
        interrupted(settings, store, job)
    for job in store.jobs_in(["validating_files"]):
        store.transition(job.id, ["validating_files"], "queued")
    for job in store.jobs_in(["queued"]):
        queue.enqueue(job.id)


def interrupted(settings: JobsSettings, store: Store, job: Job,
                reason: str = "the worker stopped while this job ran") -> bool:
    """A run ended without an outcome: queue the job again to resume from its last checkpoint
    (True), or fail it with `reason` once it has used `executor.max_attempts` runs."""
    step = JobPaths.of(settings, job.id).last_checkpoint_step()
    limit = settings.executor.max_attempts
    if job.attempts >= limit:
        message = (f"{reason}, {job.attempts} time(s) (limit "
                   f"executor.max_attempts={limit}); last checkpoint: step {step}")
        if store.transition(job.id, ["running"], "failed", error_code="job_interrupted",
                            error_message=message, pid=None):
            store.add_event(job.id, f"Job failed: {message}", level="error")
        return False
    if not store.transition(job.id, ["running"], "queued", pid=None):
        return False
    where = f"from its checkpoint at step {step}" if step else "from the start (no checkpoint yet)"
    store.add_event(job.id, f"{reason[:1].upper()}{reason[1:]}: it is queued again and "
                    f"resumes {where}", level="warn", data={"step": step})
    return True


def execute(settings: JobsSettings, job_id: str) -> None:
    """The queue's task: claim the job, run its process, watch it, settle what it left."""
    store = Store(settings.database_url)
    try:
        job = store.claim(job_id)
        if job is None:  # cancelled while queued, or a duplicate entry after a restart
            return
        store.add_event(job_id, "Fine-tuning job started" if job.attempts == 1
                        else f"Fine-tuning job resumed (run {job.attempts})")
        proc = spawn(settings, job)
        store.update_job(job_id, pid=proc.pid)
        watch(settings, store, job_id, proc)
    finally:
        store.dispose()


def spawn(settings: JobsSettings, job: Job) -> subprocess.Popen:
    """`python -m tuneship.jobs.runner <id>` in its own session (cancel kills the whole group)."""
    paths = JobPaths.of(settings, job.id)
    paths.root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.to_env(), PARENT_VAR: str(os.getpid())}
    with paths.log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "tuneship.jobs.runner", job.id], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=project_root(),
                                start_new_session=True)


def watch(settings: JobsSettings, store: Store, job_id: str, proc: subprocess.Popen) -> None:
    """Wait for the process; stop it when the job is cancelled, or when it lingers more than
    `OUTCOME_GRACE_S` after writing its outcome (the on_model_ready hook runs after `succeeded`)."""
    ended_at: float | None = None
    while True:
        try:
            proc.wait(timeout=settings.executor.poll_s)
            break
        except subprocess.TimeoutExpired:
            job = store.job(job_id)
            status = job.status if job is not None else "cancelled"
            if status != "running" and ended_at is None:
                ended_at = time.monotonic()
            if status == "cancelled" or (ended_at is not None
                                         and time.monotonic() - ended_at > OUTCOME_GRACE_S):
                stop(proc, settings.executor.kill_grace_s)
                break
    job = store.job(job_id)
    if job is None:
        return
    if job.status == "running":  # the process ended without writing an outcome
        tail = _tail(JobPaths.of(settings, job_id).log)
        message = f"the job's process ended with exit code {proc.returncode} before finishing: {tail}"
        if store.transition(job_id, ["running"], "failed", error_code="job_process_died",
                            error_message=message, pid=None):
            store.add_event(job_id, f"Job failed: {message}", level="error")
    elif job.status == "cancelled":
        discard(settings, job)
        store.update_job(job_id, pid=None)
        store.add_event(job_id, "Job process stopped; nothing was registered")


def stop(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the job's process group, SIGKILL after `grace_s`, and reap the leader."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def kill_group(job: Job) -> None:
    """Kill a job process left by a dead worker (only if it still runs this job's runner)."""
    if not job.pid:
        return
    try:
        cmdline = Path(f"/proc/{job.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if b"tuneship.jobs.runner" in cmdline and job.id.encode() in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
        for _ in range(100):
            if not Path(f"/proc/{job.pid}").exists():
                break
            time.sleep(0.05)


def discard(settings: JobsSettings, job: Job) -> None:
    """A cancelled job leaves no registered model and no RUNNING MLflow run."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = (job.result or {}).get("tracking_uri")
    if not uri:
        return
    client = MlflowClient(uri)
    with contextlib.suppress(MlflowException):
        client.delete_registered_model(job.registered_model)
    run_file = JobPaths.of(settings, job.id).work.run_file
    if run_file.is_file():
        run_id = json.loads(run_file.read_text())["run_id"]
        with contextlib.suppress(MlflowException):
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, "KILLED")


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
