"""The same pipeline against a real `mlflow server` (SQL backend, served artifacts) over HTTP."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import compose_config
from tuneship.stages import run_stages

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


POSTGRES_URI = os.environ.get("TUNESHIP_TEST_POSTGRES_URI")  # set by .ci/run


@pytest.fixture(params=["sqlite", "postgresql"])
def tracking_server(request, tmp_path: Path):
    if request.param == "sqlite":
        backend = f"sqlite:///{tmp_path / 'server.db'}"
    elif POSTGRES_URI:
        if not POSTGRES_URI.startswith("postgresql"):
            pytest.fail(f"TUNESHIP_TEST_POSTGRES_URI is not a PostgreSQL URI: {POSTGRES_URI[:40]!r}...")
        backend = POSTGRES_URI
    else:
        pytest.skip("no PostgreSQL: set TUNESHIP_TEST_POSTGRES_URI (.ci/start-postgres.sh does)")
    for attempt in (1, 2):  # a second try if the first server exits early (e.g. a port race)
        server = start_server(backend, tmp_path, tmp_path / f"server-{attempt}.log")
        if server is not None:
            break
    else:
        log = (tmp_path / "server-2.log").read_text()[-3000:]
        pytest.fail(f"mlflow server did not start on {backend.split('@')[-1]}:\n{log}")
    proc, url = server
    yield url, tmp_path / "served"
    os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers/job runner
    proc.wait(timeout=30)


def start_server(backend: str, tmp_path: Path, log: Path):
    """Start `mlflow server` in its own process group; (proc, url) once /health answers."""
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(mlflow_bin), "server", "--backend-store-uri", backend,
             "--artifacts-destination", str(tmp_path / "served"), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return None


def test_smoke_pipeline_against_a_tracking_server(tracking_server, workspace, monkeypatch):
    url, served = tracking_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    name = f"tuneship-smoke-{uuid.uuid4().hex[:8]}"  # a shared PostgreSQL outlives the test
    results = run_stages(compose_config(["experiment=smoke", f"registry.model_name={name}"]))
    assert results["promote"]["passed"] is True
    mlflow.set_tracking_uri(url)
    version = MlflowClient().get_model_version_by_alias(name, "champion")
    assert str(version.version) == "1"
    assert any(served.rglob("model_card.md"))  # artifacts went through the server
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert len(model.predict(["fine"])) == 1
    assert os.environ["MLFLOW_TRACKING_URI"] == url


def test_a_password_in_the_tracking_uri_reaches_no_param_tag_or_artifact(tracking_server,
                                                                          workspace):
    """The causal-LM stages log through one redacting register stage: a `user:secret@` URI
    override (the server ignores the credentials) leaves no trace in the run or the version."""
    url, served = tracking_server
    secret = f"s3cret-{uuid.uuid4().hex[:6]}"
    uri = url.replace("http://", f"http://tuneship:{secret}@")
    name = f"tuneship-smoke_lm-{uuid.uuid4().hex[:8]}"
    cfg = compose_config(["experiment=smoke_lm", f"registry.tracking_uri={uri}",
                          f"registry.model_name={name}", "eval.samples=1"])
    registered = run_stages(cfg, ("preprocess", "train", "evaluate", "register"))["register"]
    mlflow.set_tracking_uri(url)
    client = MlflowClient()
    run = client.get_run(registered["run_id"])
    version = client.get_model_version(name, registered["version"])
    logged = [*run.data.params.values(), *run.data.tags.values(), *version.tags.values(),
              version.description or ""]
    assert not [value for value in logged if secret in value]
    assert run.data.params["version.torch"]  # library versions are logged with the config
    files = [p for p in served.rglob("*") if p.is_file() and p.suffix in (".yaml", ".json", ".md",
                                                                          ".txt", ".jsonl")]
    assert any(p.name == "resolved.yaml" for p in files)
    assert not [p for p in files if secret in p.read_text(errors="ignore")]
    assert "tuneship:***@" in next(p for p in files if p.name == "resolved.yaml").read_text()
