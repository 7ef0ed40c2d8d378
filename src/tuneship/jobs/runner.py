"""One job in its own process: `python -m tuneship.jobs.runner <job id>` (started by the worker,
or by Ray as a submitted job's entrypoint with `executor.kind: ray`: see launch.py).

The upload is checked again and converted for the pipeline, the overrides are built, and the
job is ONE `tuneship.run_pipeline(overrides)` call. A job started again after its worker was
killed runs only the stages it has not finished (the pipeline's files in its work dir say which),
with `train.resume=auto` continuing from the last checkpoint in the same MLflow run. The outcome
(succeeded with `fine_tuned_model`, or failed with an error) is written to the store; the worker
handles a process that dies without writing one.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import signal
import sys
import traceback
from collections.abc import Iterator
from typing import Any

from tuneship.errors import TuneshipError
from tuneship.jobs import launch
from tuneship.jobs.blobs import Blobs
from tuneship.jobs.config import JobsSettings, from_env
from tuneship.jobs.convert import write_pipeline_file
from tuneship.jobs.notify import model_ready
from tuneship.jobs.overrides import DATA, base_overrides, job_overrides
from tuneship.jobs.paths import JobPaths
from tuneship.jobs.progress import JOB_VAR, MODEL_VAR
from tuneship.jobs.store import Job, Store
from tuneship.jobs.validate import FileProblem, validate
from tuneship.jobs.views import job_view
from tuneship.workdir import WorkDir

log = logging.getLogger("tuneship.jobs.runner")
ORDER = ["preprocess", "train", "evaluate", "register", "promote"]
PARENT_VAR = "TUNESHIP_JOB_PARENT"
CALLBACKS_VAR = "TUNESHIP_TRAINER_CALLBACKS"  # read by tuneship.train.stage
PROGRESS = "tuneship.jobs.progress:JobProgress"
_STAGE_LOG = re.compile(r"^stage (\w+)(?: \(\w+\))?: (start|done in [\d.]+ s)$")


def remaining_stages(work: WorkDir) -> list[str]:
    """The stages still to run, from what earlier attempts left in the work dir."""
    if not (work.data / "stats.json").is_file() or not work.run_file.is_file():
        return ORDER
    for done, start in ((work.train_result, "train"), (work.report, "evaluate"),
                        (work.registered, "register")):
        if not done.is_file():
            return ORDER[ORDER.index(start):]
    return ["promote"]


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the worker that started it dies (no orphaned training)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    parent = os.environ.get(PARENT_VAR)
    if parent and os.getppid() != int(parent):  # the worker died before prctl took effect
        sys.exit(1)


def prepare_data(settings: JobsSettings, store: Store, job: Job, paths: JobPaths) -> None:
    """The upload, checked again (the bytes must still be valid), as the pipeline's JSONL."""
    if paths.data_file.is_file():
        return
    row = store.get_file(job.owner_id, job.training_file)
    blobs = Blobs(settings.files_dir)
    if row is None or not blobs.path(row.id).is_file():
        raise TuneshipError(f"training file {job.training_file} is no longer stored")
    try:
        checked = validate(blobs.get(row.id), row.filename, settings.limits)
    except FileProblem as err:
        raise TuneshipError(f"{job.training_file}: {err}") from None
    write_pipeline_file(checked, paths.data_file)


def resolved_hyperparameters(job: Job, cfg: Any) -> dict[str, Any]:
    """OpenAI's names with `auto` replaced by the preset's values."""
    hyper = dict(job.hyperparameters)
    if hyper.get("n_epochs", "auto") == "auto":
        hyper["n_epochs"] = float(cfg.train.epochs) if cfg.train.max_steps <= 0 else "auto"
    if hyper.get("batch_size", "auto") == "auto":
        hyper["batch_size"] = int(cfg.train.batch_size)
    if hyper.get("learning_rate_multiplier", "auto") == "auto":
        hyper["learning_rate_multiplier"] = 1.0
    return hyper


class StageEvents(logging.Handler):
    """The pipeline's `stage X: start / done in N s` log lines → job events; remembers the stage."""

    def __init__(self, store: Store, job_id: str) -> None:
        super().__init__(logging.INFO)
        self.store, self.job_id, self.stage = store, job_id, "preprocess"

    def emit(self, record: logging.LogRecord) -> None:
        match = _STAGE_LOG.match(record.getMessage())
        if not match:
            return
        self.stage = match.group(1)
        what = "started" if match.group(2) == "start" else match.group(2)
        self.store.add_event(self.job_id, f"Stage {self.stage}: {what}",
                             data={"stage": self.stage})


@contextlib.contextmanager
def attached(handler: logging.Handler) -> Iterator[None]:
    logger = logging.getLogger("tuneship.stages")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def run(settings: JobsSettings, store: Store, job_id: str) -> None:
    from tuneship import run_pipeline
    from tuneship.pipeline import compose_config

    job = store.job(job_id)
    if job is None or job.status != "running":
        return
    entry, paths = settings.models[job.model], JobPaths.of(settings, job_id)
    events = StageEvents(store, job_id)
    try:
        prepare_data(settings, store, job, paths)
        stages = remaining_stages(paths.work)
        base = compose_config([*base_overrides(entry), *DATA[entry.task]])
        hyper = resolved_hyperparameters(job, base)
        store.update_job(job_id, hyperparameters=hyper,
                         result={"tracking_uri": str(base.registry.tracking_uri)})
        if stages != ORDER:
            store.add_event(job_id, f"Resuming at stage {stages[0]} (last checkpoint: step "
                            f"{paths.last_checkpoint_step()})", data={"stages": stages})
        overrides = job_overrides(entry, job_id=job_id, data_file=paths.data_file,
                                  work_dir=paths.work.root, model_name=job.registered_model,
                                  seed=job.seed, hyper=job.hyperparameters,
                                  base_lr=float(base.train.lr), stages=stages)
        log.info("job %s: run_pipeline(%s)", job_id, overrides)
        os.environ.update({CALLBACKS_VAR: PROGRESS, JOB_VAR: job_id,
                           MODEL_VAR: job.registered_model})
        with attached(events):
            results = run_pipeline(overrides)
    except TuneshipError as err:
        fail(store, job, paths, events.stage, str(err))
        return
    succeed(settings, store, job, paths, results)


def succeed(settings: JobsSettings, store: Store, job: Job, paths: JobPaths,
            results: dict) -> None:
    """Lineage tags on the version, the outcome in the store, then the serving seam."""
    work = paths.work
    registered = work.read(work.registered, "the register stage writes it")
    report = work.read(work.report, "the evaluate stage writes it")
    gate = results.get("promote") or {}
    result = {**(store.job(job.id).result or {}), "model_uri": registered["model_uri"],
              "version": registered["version"], "run_id": registered["run_id"],
              "metrics": report["metrics"], "headline": report.get("headline"),
              "gate": {k: gate.get(k) for k in ("passed", "reason")}}
    tag_lineage(result["tracking_uri"], registered, store.job(job.id), settings)
    headline = report.get("headline")
    store.add_event(job.id, f"Test split: {headline}={report['metrics'].get(headline)}",
                    type="metrics", data=report["metrics"])
    if gate:
        verdict = "passed: now @champion" if gate.get("passed") else "not passed: stays @challenger"
        store.add_event(job.id, f"Gate {verdict} ({gate.get('reason')})", data=gate)
    if not store.transition(job.id, ["running"], "succeeded", fine_tuned_model=registered["name"],
                            result=result, pid=None):
        return  # cancelled meanwhile: the worker discards the registered model
    store.add_event(job.id, f"New fine-tuned model created: {registered['name']}")
    store.add_event(job.id, "The job has successfully completed")
    try:
        model_ready(settings, {**job_view(store.job(job.id)), "result": result})
    except Exception as err:  # the model is registered either way; say what went wrong
        log.exception("on_model_ready failed")
        store.add_event(job.id, f"Serving was not told of the model: {err}", level="warn")


def tag_lineage(tracking_uri: str, registered: dict, job: Job, settings: JobsSettings) -> None:
    """Job id, file id and SHA-256, base model and hyperparameters on the registered version."""
    import json

    from mlflow.tracking import MlflowClient

    file_row = Store(settings.database_url).get_file(job.owner_id, job.training_file)
    tags = {"job.id": job.id, "job.base_model": job.model, "job.training_file": job.training_file,
            "job.training_file_sha256": file_row.sha256 if file_row else "deleted",
            "job.hyperparameters": json.dumps(job.hyperparameters), "job.owner": job.owner_id}
    client = MlflowClient(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(registered["name"], str(registered["version"]), key, value)


def fail(store: Store, job: Job, paths: JobPaths, stage: str, message: str) -> None:
    """A clear error on the job: the stage it failed in, no local paths."""
    message = (message.replace(str(paths.data_file), job.training_file)
               .replace(str(paths.root), "<job dir>"))
    code, param = {"preprocess": ("invalid_training_file", "training_file"),
                   "internal": ("internal_error", None)}.get(stage, (f"{stage}_failed", None))
    if store.transition(job.id, ["running"], "failed", error_code=code, error_message=message,
                        error_param=param, pid=None):
        store.add_event(job.id, f"Job failed in stage {stage}: {message}", level="error")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tuneship.jobs.runner <job id>", file=sys.stderr)
        return 2
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        launch.apply()  # started by Ray: settings and environment from the job's launch file
    except TuneshipError as err:
        print(f"tuneship: error: {err}", file=sys.stderr)
        return 2
    settings = from_env()
    store = Store(settings.database_url)
    job_id = args[0]
    try:
        run(settings, store, job_id)
    except Exception as err:
        traceback.print_exc()
        job = store.job(job_id)
        if job is not None:
            paths = JobPaths.of(settings, job_id)
            fail(store, job, paths, "internal", f"{type(err).__name__}: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
