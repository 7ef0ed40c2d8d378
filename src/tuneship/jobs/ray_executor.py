"""The ray executor (`executor.kind: ray`): each run of a job is a Ray job, submitted through Ray's
Job Submission API; its entrypoint is the runner the local executor starts.

The worker keeps its huey queue and `executor.concurrency` threads: a thread takes a job, submits
one run (submission id `<job id>-<attempt>`, so a restarted worker finds the run it submitted
instead of submitting it twice) and polls Ray and the store until the run ends. Ray places the
run on a node with `executor.ray_num_cpus` free. The store stays the source of truth: the runner
writes the outcome there. A run that ends without one (stopped from Ray's side, killed, its node
lost, the head unreachable) goes through `worker.interrupted`: queued again to resume from its
checkpoint, or failed with the reason once `executor.max_attempts` runs are used. Cancel →
`stop_job`. Stopping the worker leaves the runs going; started again, it attaches to them.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import re
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from tuneship.errors import TuneshipError
from tuneship.jobs import launch
from tuneship.jobs.config import ENV_API_KEY, ENV_SETTINGS, JobsSettings
from tuneship.jobs.paths import JobPaths
from tuneship.jobs.runner import PARENT_VAR
from tuneship.jobs.store import FINAL, Job, Store
from tuneship.jobs.worker import discard, interrupted

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

log = logging.getLogger("tuneship.jobs.ray")
T = TypeVar("T")
ENDED = ("SUCCEEDED", "FAILED", "STOPPED")
NOT_FORWARDED = {ENV_SETTINGS, ENV_API_KEY, "TUNESHIP_API_KEY", PARENT_VAR, launch.LAUNCH_VAR}
ADDRESS_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")  # read by JobSubmissionClient
SETTLE_S = 60.0  # how long a run may go on after its outcome is written, or after stop_job
_watched: set[str] = set()  # jobs a thread of this worker polls (one worker per queue)
_watched_lock = threading.Lock()


class RayUnavailable(TuneshipError):
    """The head did not answer for `executor.ray_unreachable_s`, or refused a call."""


def connect(settings: JobsSettings, wait: bool = True) -> JobSubmissionClient:
    """A client of the head's Job Submission API (retried while unreachable if `wait`)."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise TuneshipError("executor.kind=ray needs Ray's client in this environment: "
                            "pip install 'ray[default]==2.60.0'") from None
    address = settings.executor.ray_address
    for name in ADDRESS_VARS:  # Ray's client prefers these to the address it is given
        if os.environ.get(name, address) != address:
            log.info("using executor.ray_address=%s, not %s=%s", address, name, os.environ.pop(name))
    try:
        return _call(settings, lambda: JobSubmissionClient(address), retry=wait)
    except RayUnavailable as err:
        raise RayUnavailable(f"{err}: start a head (`ray start --head --dashboard-host=127.0.0.1`) "
                             "or set executor.ray_address / RAY_ADDRESS to its dashboard") from None


def _call(settings: JobsSettings, fn: Callable[[], T], retry: bool = True) -> T:
    """`fn()`, retried every 2 s while the head is unreachable, up to `ray_unreachable_s`."""
    deadline = time.monotonic() + settings.executor.ray_unreachable_s
    while True:
        try:
            return fn()
        except OSError as err:  # ConnectionError, requests' RequestException
            if not retry or time.monotonic() > deadline:
                raise RayUnavailable(f"no Ray dashboard answers at {settings.executor.ray_address} "
                                     f"({type(err).__name__})") from None
            log.warning("Ray at %s unreachable (%s): retrying", settings.executor.ray_address, err)
            time.sleep(2.0)


def submission_id(job: Job) -> str:
    """One Ray job per run of ours: a resubmission after a restart reuses the same id."""
    return f"{job.id}-{job.attempts}"


def execute(settings: JobsSettings, job_id: str) -> None:
    """The queue's task: claim the job (or attach to its run after a restart), then submit and
    watch its runs until it has an outcome (a run interrupted is followed by the next at once)."""
    with _watching(job_id) as mine:
        if not mine:  # a duplicate queue entry while a thread already polls this job
            return
        store = Store(settings.database_url)
        try:
            while (job := _next_run(store, job_id)) is not None:
                reason = run_once(settings, store, job)
                if reason is None or not interrupted(settings, store, job, reason):
                    break
            if (job := store.job(job_id)) is not None and job.status in FINAL:
                launch.remove(JobPaths.of(settings, job_id).launch)
        finally:
            store.dispose()


@contextlib.contextmanager
def _watching(job_id: str) -> Iterator[bool]:
    with _watched_lock:
        mine = job_id not in _watched
        _watched.add(job_id)
    try:
        yield mine
    finally:
        if mine:
            with _watched_lock:
                _watched.discard(job_id)


def _next_run(store: Store, job_id: str) -> Job | None:
    """The job to run: claimed if queued, as it is if still `running` (attach), else None."""
    job = store.job(job_id)
    if job is None or job.status not in ("queued", "running"):
        return None
    if job.status == "running":
        return job
    job = store.claim(job_id)
    if job is not None:
        store.add_event(job_id, "Fine-tuning job started" if job.attempts == 1
                        else f"Fine-tuning job resumed (run {job.attempts})")
    return job


def run_once(settings: JobsSettings, store: Store, job: Job) -> str | None:
    """One run on Ray, watched to its end. Returns why it ended without an outcome, or None
    when the job is settled (the runner wrote its outcome, or it was cancelled)."""
    try:
        client = connect(settings)
        submit(settings, client, store, job)
        return watch(settings, client, store, job)
    except RayUnavailable as err:
        return f"Ray could not run {submission_id(job)}: {err}"


def submit(settings: JobsSettings, client: JobSubmissionClient, store: Store, job: Job) -> None:
    """Submit the run unless Ray has it already (a worker restarted after submitting it)."""
    sub = submission_id(job)
    if (info := _info(settings, client, sub)) is not None:
        store.add_event(job.id, f"Attached to Ray job {sub} ({_status(info)})",
                        data={"ray_submission_id": sub})
        return
    paths = JobPaths.of(settings, job.id)
    launch.write(paths.launch, {**forwarded(settings), **settings.to_env()})
    ex = settings.executor
    try:
        _call(settings, lambda: client.submit_job(
            entrypoint=entrypoint(settings, job), submission_id=sub,
            runtime_env={**ex.ray_runtime_env, "env_vars": {launch.LAUNCH_VAR: str(paths.launch)}},
            entrypoint_num_cpus=ex.ray_num_cpus, entrypoint_num_gpus=ex.ray_num_gpus or None,
            metadata={"tuneship_job_id": job.id, "tuneship_attempt": str(job.attempts)}))
    except RuntimeError as err:  # Ray answered with an error (or had it already: a retry)
        if _info(settings, client, sub) is None:
            raise RayUnavailable(f"Ray refused the submission: {_first_line(str(err))}") from None
    store.add_event(job.id, f"Submitted to Ray as {sub} ({ex.ray_num_cpus:g} CPU)",
                    data={"ray_submission_id": sub, "ray_address": ex.ray_address})


def entrypoint(settings: JobsSettings, job: Job) -> str:
    """The local executor's command: no settings, no secrets (those are in the launch file)."""
    python = settings.executor.ray_python or sys.executable
    return f"{shlex.quote(python)} -m tuneship.jobs.runner {shlex.quote(job.id)}"


def forwarded(settings: JobsSettings) -> dict[str, str]:
    """The worker's variables named by `executor.ray_env` (patterns), for the launch file."""
    patterns = settings.executor.ray_env
    return {k: v for k, v in os.environ.items() if k not in NOT_FORWARDED
            and any(fnmatch.fnmatchcase(k, p) for p in patterns)}


def watch(settings: JobsSettings, client: JobSubmissionClient, store: Store, job: Job) -> str | None:
    """Poll Ray and the store until the run ends; `stop_job` when the job is cancelled."""
    sub, paths = submission_id(job), JobPaths.of(settings, job.id)
    settled_at, stopped = None, False
    while True:
        info = _info(settings, client, sub)  # read before the store: an outcome precedes the end
        current = store.job(job.id)
        if current is None or current.attempts != job.attempts:
            return None
        if current.status == "cancelled":
            stop(settings, client, store, current)
            return None
        if info is None or _status(info) in ENDED:
            logs = keep_logs(client, sub, paths)
            return _ended_early(sub, info, logs) if current.status == "running" else None
        if current.status in FINAL and not stopped:  # outcome written: let the runner exit
            settled_at = settled_at or time.monotonic()
            if time.monotonic() - settled_at > SETTLE_S:
                with contextlib.suppress(RuntimeError):
                    _call(settings, lambda: client.stop_job(sub))
                stopped = True
        time.sleep(settings.executor.poll_s)


def stop(settings: JobsSettings, client: JobSubmissionClient, store: Store, job: Job) -> None:
    """A cancelled job: stop its run, wait for Ray to end it, leave no registered model."""
    sub, paths = submission_id(job), JobPaths.of(settings, job.id)
    with contextlib.suppress(RuntimeError):  # Ray has no such run (any more)
        _call(settings, lambda: client.stop_job(sub))
    deadline = time.monotonic() + SETTLE_S
    while (info := _info(settings, client, sub)) is not None and _status(info) not in ENDED:
        if time.monotonic() > deadline:
            store.add_event(job.id, f"Ray job {sub} did not stop in {SETTLE_S:.0f} s", level="warn")
            break
        time.sleep(settings.executor.poll_s)
    discard(settings, job)
    keep_logs(client, sub, paths)
    store.add_event(job.id, f"Ray job {sub} stopped; nothing was registered")


def keep_logs(client: JobSubmissionClient, sub: str, paths: JobPaths) -> str:
    """Ray's log of the run, appended to the job's log (where the local executor writes it)."""
    try:
        text = client.get_job_logs(sub)
        paths.root.mkdir(parents=True, exist_ok=True)
        with paths.log.open("a") as out:
            out.write(f"--- Ray job {sub} ---\n{text}\n")
    except (OSError, RuntimeError) as err:
        return f"(no log from Ray: {type(err).__name__})"
    return text


def _info(settings: JobsSettings, client: JobSubmissionClient, sub: str) -> JobDetails | None:
    """Ray's record of one run; None if Ray has none (never submitted, or the head restarted)."""
    try:
        return _call(settings, lambda: client.get_job_info(sub))
    except RuntimeError as err:
        if "does not exist" in str(err):
            return None
        raise RayUnavailable(f"Ray answered an error for {sub}: {_first_line(str(err))}") from None


def _status(info: JobDetails) -> str:
    return getattr(info.status, "value", str(info.status))


def _ended_early(sub: str, info: JobDetails | None, logs: str) -> str:
    """Why a run ended without an outcome: Ray's status and message (and the log's last lines)."""
    if info is None:
        return f"Ray no longer knows the run {sub} (was the head restarted?)"
    message = _first_line(info.message or "").split(", last available logs")[0]
    why = f"the Ray job {sub} ended {_status(info)}" + (f" ({message})" if message else "")
    if _status(info) == "FAILED":
        why += f" [log: {log_tail(logs)}]"
    return f"{why} before the job finished"


def log_tail(text: str, lines: int = 2) -> str:
    """The last lines of a log, without progress bars' carriage returns and ANSI escapes."""
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    kept = [part.strip() for line in plain.splitlines() for part in line.split("\r")[-1:]]
    return " | ".join([k for k in kept if k][-lines:]) or "(empty log)"


def _first_line(text: str, limit: int = 300) -> str:
    return (text.strip().splitlines() or [""])[0][:limit]
