"""The same pipeline against a real `mlflow server` (SQL backend, served artifacts) over HTTP."""

import os
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
        backend = POSTGRES_URI
    else:
        pytest.skip("no PostgreSQL: set TUNESHIP_TEST_POSTGRES_URI (.ci/start-postgres.sh does)")
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", backend,
         "--artifacts-destination", str(tmp_path / "served"), "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
        time.sleep(0.5)
    yield url, tmp_path / "served"
    proc.terminate()
    proc.wait(timeout=30)


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
