"""MLflow for the stages: one run per pipeline execution, shared through `<work_dir>/run.json`.

The preprocess stage opens a new run; later stages (in the same process or run alone) reopen it.
A run left RUNNING by a killed process is marked FAILED when the next pipeline starts, and the
new run is tagged with the run it follows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.entities import RunStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tuneship.config import RegistryConfig
from tuneship.errors import TuneshipError
from tuneship.workdir import WorkDir

log = logging.getLogger(__name__)
PARENT_RUN_VAR = "TUNESHIP_PARENT_RUN_ID"


def connect(reg: RegistryConfig) -> MlflowClient:
    """Point MLflow at the configured store and make sure the experiment exists."""
    mlflow.set_tracking_uri(reg.tracking_uri)
    with store_lock(reg.tracking_uri):
        return _ensure_experiment(reg)


def store_lock(uri: str) -> contextlib.AbstractContextManager:
    """A lock for a local SQLite store (creating its tables, moving aliases): take turns.

    A tracking server serializes writes itself; the gate's read-decide-write is then not atomic
    across hosts (documented in the README)."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{db}.lock", timeout=300)


def _ensure_experiment(reg: RegistryConfig) -> MlflowClient:
    client = MlflowClient()
    try:
        if client.get_experiment_by_name(reg.experiment) is None:
            local = "://" not in reg.tracking_uri or reg.tracking_uri.startswith("sqlite")
            location = Path(reg.artifact_location).as_uri() if local and reg.artifact_location else None
            with contextlib.suppress(MlflowException):  # created meanwhile by a parallel run
                client.create_experiment(reg.experiment, artifact_location=location)
        mlflow.set_experiment(reg.experiment)
    except MlflowException as err:
        raise TuneshipError(f"MLflow store at {reg.tracking_uri} is not usable: {err}") from None
    return client


def by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding `alias`, or None (also when the model is not registered yet)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def start_pipeline_run(reg: RegistryConfig, work: WorkDir, run_name: str) -> str:
    """Open a new run for this pipeline execution and record its id in `work_dir`."""
    client = connect(reg)
    previous = _previous_run(work)
    tags = {"tuneship.work_dir": str(work.root)}
    if parent := os.environ.get(PARENT_RUN_VAR):  # a sweep trial: nest under the sweep's run
        tags["mlflow.parentRunId"] = parent
    if previous and _mark_killed(client, previous):
        tags["tuneship.follows_failed_run"] = previous
    run = client.create_run(mlflow.get_experiment_by_name(reg.experiment).experiment_id,
                            run_name=run_name, tags=tags)
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
    WorkDir.write(work.run_file, {"run_id": run.info.run_id})
    return run.info.run_id


@contextlib.contextmanager
def stage_run(reg: RegistryConfig, work: WorkDir, stage: str) -> Iterator[mlflow.ActiveRun]:
    """Reopen the pipeline's run for one stage; a stage that raises leaves it FAILED."""
    connect(reg)
    run_id = _previous_run(work)
    if run_id is None:
        raise TuneshipError(f"no pipeline run recorded in {work.run_file}: "
                            "run the preprocess stage (or pipelines/run.py) first")
    os.environ.pop("MLFLOW_RUN_ID", None)
    with mlflow.start_run(run_id=run_id) as run:
        mlflow.set_tag("tuneship.last_stage", stage)
        yield run


def _previous_run(work: WorkDir) -> str | None:
    return json.loads(work.run_file.read_text())["run_id"] if work.run_file.is_file() else None


def _mark_killed(client: MlflowClient, run_id: str) -> bool:
    """A run still RUNNING when a new pipeline starts was killed: mark it FAILED."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return False
    if run.info.status != "RUNNING":
        return run.info.status == "FAILED"
    client.set_tag(run_id, "tuneship.failure", "interrupted (process ended without closing it)")
    client.set_terminated(run_id, "FAILED")
    log.warning("run %s was left RUNNING by a killed process: marked FAILED", run_id)
    return True
