"""`make containerize` and the image it builds, end to end, with a real container engine.

Session setup (~2 min with a warm layer cache, ~5 min cold on 2 cores: the bento's requirements
and torch install dominate; the base image is built first if missing, ~70 s more): the smoke
pipeline into a temporary MLflow store, `make bento`'s build into a temporary BENTOML_HOME
(with the base image / torch source `image-path.sh` picks),
`make containerize` into a uniquely tagged image, then one container on a free loopback port.
The container and the image are removed afterwards, also on failure, and dangling layers pruned.
Skips only when there is no engine that can run containers (docker or podman).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import FAST_SMOKE, NAME, ROOT, _free_port, _run, champion_scores, isolated_env

pytestmark = [pytest.mark.integration, pytest.mark.container, pytest.mark.slow]

TEXTS = ["a gripping, beautifully acted film", "a dull and lifeless mess", "an instant classic"]
BASE_IMAGE = "localhost/debian-python:bookworm"
BUILD_TIMEOUT_S = 1800  # cold build on a busy 2-core VM: build-essential + torch + requirements
READY_TIMEOUT_S = 180


@dataclass
class Container:
    engine: str
    name: str
    image: str
    url: str
    env: dict[str, str]
    tracking_uri: str

    def cmd(self, *args: str, timeout: int = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.engine, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)


def _engine(env: dict[str, str]) -> str:
    """docker or podman (exports CONTAINERS_CONF into env), else skip with the reason."""
    done = subprocess.run(["bash", "-c", '. deploy/container/engine.sh && echo "$CONTAINER_ENGINE"'
                           ' && echo "${CONTAINERS_CONF:-}"'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.skip(f"{done.stderr.strip() or 'no container engine'} "
                    "(.ci/install-container-engine.sh)")
    engine, conf = (done.stdout.splitlines() + [""])[:2]
    if engine == "buildah":
        pytest.skip("only buildah here: it builds images but cannot run them (install podman)")
    if conf:
        env["CONTAINERS_CONF"] = conf
    return engine


def _image_path_env(env: dict[str, str]) -> None:
    """The base image / torch wheel choice of `make bento` (deploy/container/image-path.sh)."""
    done = subprocess.run(
        ["bash", "-c", '. deploy/container/image-path.sh "$0"; '
         'printf "%s\\n%s\\n" "${TUNESHIP_BASE_IMAGE:-}" "${TUNESHIP_TORCH_WHEEL:-}"',
         sys.executable], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    base, wheel = (done.stdout.splitlines() + ["", ""])[:2]
    if base:
        env["TUNESHIP_BASE_IMAGE"] = base
    if wheel:
        env["TUNESHIP_TORCH_WHEEL"] = wheel


def _ensure_base_image(engine: str, env: dict[str, str]) -> None:
    base = env.get("TUNESHIP_BASE_IMAGE")
    if engine != "podman" or base != BASE_IMAGE:
        return
    if subprocess.run(["podman", "image", "exists", base], env=env, timeout=60).returncode != 0:
        done = subprocess.run(["bash", "deploy/container/build-base-image.sh"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"build-base-image.sh failed:\n{done.stdout}\n{done.stderr}"


def _make(target: str, env: dict[str, str], timeout: int, **variables: str) -> str:
    venv = Path(sys.prefix)
    args = [f"{k}={v}" for k, v in variables.items()]
    if (venv / ".installed").exists():  # the venv running the tests; else the Makefile's default
        args.append(f"VENV={venv}")
    done = subprocess.run(["make", "--no-print-directory", target, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (f"make {target} failed ({done.returncode}):\n"
                                  f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done.stdout + done.stderr


def _cleanup(engine: str, env: dict[str, str], name: str, image: str) -> None:
    for cmd in (["rm", "-f", "-t", "5", name] if engine == "podman" else ["rm", "-f", name],
                ["rmi", "-f", image], ["image", "prune", "-f"]):
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([engine, *cmd], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """Smoke champion → bento → `make containerize` → one running container."""
    if not shutil.which("make"):
        pytest.skip("make not installed")
    tmp = tmp_path_factory.mktemp("container")
    env = isolated_env(tmp)
    tracking_uri = env["MLFLOW_TRACKING_URI"]
    engine = _engine(env)
    _image_path_env(env)
    _ensure_base_image(engine, env)
    _run("run.py", FAST_SMOKE, env, timeout=420)
    _run("bento.py", ["experiment=smoke"], env, timeout=240)

    suffix = uuid.uuid4().hex[:8]
    image, name = f"localhost/tuneship-smoke-test:{suffix}", f"tuneship-smoke-test-{suffix}"
    port = _free_port()
    try:
        _make("containerize", env, BUILD_TIMEOUT_S, experiment="smoke", IMAGE=image)
        if engine == "podman":  # host network: the VM's rootful podman bridge is not needed
            net = ["--network", "host", "-e", "BENTOML_HOST=127.0.0.1", "-e", f"BENTOML_PORT={port}"]
        else:
            net = ["-p", f"127.0.0.1:{port}:3000"]
        started = subprocess.run([engine, "run", "-d", "--name", name, *net, image], env=env,
                                 capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, f"{engine} run failed: {started.stderr}"
        box = Container(engine, name, image, f"http://127.0.0.1:{port}", env, tracking_uri)
        _wait_ready(box)
        yield box
    finally:
        _cleanup(engine, env, name, image)


def _wait_ready(box: Container) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        state = box.cmd("inspect", "-f", "{{.State.Running}}", box.name).stdout.strip()
        if state != "true":
            pytest.fail(f"container exited:\n{box.cmd('logs', box.name).stdout[-3000:]}"
                        f"{box.cmd('logs', box.name).stderr[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{box.url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(1)
    logs = box.cmd("logs", box.name)
    pytest.fail(f"{box.url} not ready in {READY_TIMEOUT_S} s:\n{logs.stdout[-3000:]}"
                f"{logs.stderr[-3000:]}")


def _exec(box: Container, *cmd: str) -> str:
    done = box.cmd("exec", box.name, *cmd, timeout=120)
    assert done.returncode == 0, f"exec {cmd} failed: {done.stderr}"
    return done.stdout.strip()


def test_ready_and_classifies_like_the_registered_model(container: Container) -> None:
    with httpx.Client(base_url=container.url, timeout=60) as http:
        assert http.get("/readyz").status_code == 200
        resp = http.post("/classify", json={"texts": TEXTS, "all_scores": True})
        assert resp.status_code == 200, resp.text
        body = resp.json()
    expected = champion_scores(container.tracking_uri, TEXTS)
    assert body["model"]["name"] == NAME
    assert len(body["predictions"]) == len(TEXTS)
    for pred, ref in zip(body["predictions"], expected, strict=True):
        assert set(pred["scores"]) == set(ref)
        assert 0.0 <= pred["score"] <= 1.0
        for label, score in ref.items():
            assert pred["scores"][label] == pytest.approx(score, abs=1e-4)
        assert pred["label"] == max(ref, key=ref.__getitem__)


def test_bad_requests_get_4xx(container: Container) -> None:
    with httpx.Client(base_url=container.url, timeout=30) as http:
        empty = http.post("/classify", json={"texts": []})
        assert empty.status_code == 400, empty.text
        wrong_type = http.post("/classify", content=b"texts=hi",
                               headers={"content-type": "text/plain"})
        assert wrong_type.status_code == 415, wrong_type.text


def test_image_is_cpu_only_non_root_and_labelled(container: Container) -> None:
    torch_version = _exec(container, "/app/.venv/bin/python", "-c",
                          "import torch; print(torch.__version__, torch.version.cuda)")
    assert torch_version.endswith("+cpu None"), torch_version
    site = _exec(container, "sh", "-c", "ls /app/.venv/lib/python3*/site-packages").split()
    # nvidia_ml_py (pynvml, a BentoML dependency) is a pure-Python NVML binding, not CUDA.
    cuda = [p for p in site if p.lower().startswith("nvidia") and "ml_py" not in p.lower()]
    assert not cuda, f"CUDA wheels in the image: {cuda}"
    assert _exec(container, "id", "-u") != "0", "the server runs as root"
    assert _exec(container, "id", "-un") == "bentoml"

    inspect = json.loads(container.cmd("image", "inspect", container.image).stdout)[0]
    config = inspect.get("Config") or {}
    labels = config.get("Labels") or {}
    assert labels.get("ai.tuneship.model.name") == NAME
    assert labels.get("ai.tuneship.model.version") == "1"
    assert labels.get("ai.tuneship.model.alias") == "champion"
    assert len(labels.get("ai.tuneship.model.run_id", "")) == 32
    assert config.get("User") == "bentoml"
    env_names = {e.split("=", 1)[0] for e in config.get("Env") or []}
    secret_words = {"KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIALS"}
    leaked = {n for n in env_names if secret_words & set(n.upper().split("_"))}
    assert not leaked, f"secret-looking variables baked into the image: {leaked}"
