"""Shared fixtures for the serving tests: the smoke bento built once per session and served.

One session-scoped setup (about a minute and a half on 2 cores): the smoke pipeline into a
temporary MLflow store, `pipelines/bento.py` into a temporary BENTOML_HOME, then two real
`bentoml serve` processes of the built bento on free loopback ports, one open and one with an
API key. Lazy: only tests that ask for `served`/`client` pay for it. `served_lm` does the same
for the causal-LM track (smoke_lm, `/generate`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
NAME = "tuneship-smoke"
LM_NAME = "tuneship-smoke_lm"
API_KEY = "tuneship-test-key-4f9c2d"
TEXTS = ["a gripping, beautifully acted film", "a dull and lifeless mess",
         "the plot is thin but the jokes land", "I would not watch it again",
         "an instant classic", "two hours I will never get back"]
READY_TIMEOUT_S = 150
FAST_SMOKE = ["experiment=smoke", "train.max_steps=2", "train.eval_steps=2",
              "train.save_steps=2", "eval.bootstrap_samples=10"]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path


@dataclass
class Served:
    open: Server
    keyed: Server
    tracking_uri: str
    bentoml_home: Path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test's report carries the tail of every server log its fixtures started (the
    server's side of a 500 is otherwise lost with the temporary directory)."""
    report = yield
    if report.failed:
        for server in _servers(getattr(item, "funcargs", {}).values()):
            with contextlib.suppress(OSError):
                report.sections.append((f"server log {server.log}",
                                        server.log.read_text(errors="replace")[-6000:]))
    return report


def _servers(values) -> Iterator[Server]:
    for value in values:
        if isinstance(value, Server):
            yield value
        elif isinstance(value, Served):
            yield from (value.open, value.keyed)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(env: dict[str, str], log: Path, bento: str = f"{NAME}:latest",
           options: tuple[str, ...] = ()) -> Server:
    """`bentoml serve <bento> <options>` on a free port."""
    port = _free_port()
    cmd = [str(Path(sys.executable).with_name("bentoml")), "serve", bento,
           "--host", "127.0.0.1", "--port", str(port), *options]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=ROOT)
    return Server(f"http://127.0.0.1:{port}", proc, log)


def _wait_ready(server: Server, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"bentoml serve exited ({server.proc.returncode}):\n"
                        f"{server.log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    pytest.fail(f"{server.url} not ready in {READY_TIMEOUT_S} s:\n{server.log.read_text()[-3000:]}")


def _stop(server: Server) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGTERM)
    try:
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)


def _run(script: str, overrides: list[str], env: dict[str, str], timeout: int) -> None:
    done = subprocess.run([sys.executable, f"pipelines/{script}", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


def champion_scores(tracking_uri: str, texts: list[str]) -> list[dict[str, float]]:
    """Every label's score per text from the registered @champion, loaded in this process."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        pipe = mlflow.transformers.load_model(f"models:/{NAME}@champion")
    finally:
        mlflow.set_tracking_uri(previous)
    return [{s["label"]: s["score"] for s in scores} for scores in pipe(texts, top_k=None)]


def isolated_env(tmp: Path) -> dict[str, str]:
    """Environment for a smoke pipeline + bento under `tmp`: own MLflow store and BentoML home."""
    env = {**os.environ, "TUNESHIP_OUTPUT_DIR": str(tmp / "outputs"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "TUNESHIP_ARTIFACTS": str(tmp / "mlartifacts"),
           "TUNESHIP_CACHE": str(ROOT / ".cache"), "BENTOML_HOME": str(tmp / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "true"}  # offline hub: set by tuneship.settings, inherited
    env.pop("TUNESHIP_API_KEY", None)
    return env


@contextlib.contextmanager
def serving_source(env: dict[str, str], log: Path, args: dict[str, object]) -> Iterator[Server]:
    """`bentoml serve service:Tuneship` from bentos/ with these bento arguments (a built bento's
    own arguments would win over `--arg`), stopped afterwards."""
    options = ("--working-dir", str(ROOT / "bentos"),
               *(f"--arg={key}={value}" for key, value in args.items()))
    server = _start(env, log, "service:Tuneship", options)
    try:
        _wait_ready(server, time.monotonic() + READY_TIMEOUT_S)
        yield server
    finally:
        _stop(server)


def run_script(script: str, overrides: list[str], env: dict[str, str], timeout: int) -> None:
    """`pipelines/<script> <overrides>` in a child process; fails the test with its output."""
    _run(script, overrides, env, timeout)


@contextlib.contextmanager
def serving(env: dict[str, str], log: Path, bento: str = f"{NAME}:latest") -> Iterator[Server]:
    """`bentoml serve <bento>` on a free port once ready, stopped afterwards."""
    server = _start(env, log, bento)
    try:
        _wait_ready(server, time.monotonic() + READY_TIMEOUT_S)
        yield server
    finally:
        _stop(server)


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Smoke champion → BentoML store → bento → two `bentoml serve` processes."""
    tmp = tmp_path_factory.mktemp("serving")
    env = isolated_env(tmp)
    tracking_uri = env["MLFLOW_TRACKING_URI"]
    _run("run.py", FAST_SMOKE, env, timeout=420)
    _run("bento.py", ["experiment=smoke"], env, timeout=240)
    open_server = _start(env, tmp / "open.log")
    keyed = _start({**env, "TUNESHIP_API_KEY": API_KEY}, tmp / "keyed.log")
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        _wait_ready(open_server, deadline)
        _wait_ready(keyed, deadline)
        yield Served(open_server, keyed, tracking_uri, tmp / "bentoml")
    finally:
        _stop(open_server)
        _stop(keyed)


@pytest.fixture(scope="session")
def served_lm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """smoke_lm (tiny Llama + LoRA) trained, gated, registered → its bento → served twice."""
    tmp = tmp_path_factory.mktemp("serving_lm")
    env = isolated_env(tmp)
    _run("run.py", ["experiment=smoke_lm"], env, timeout=420)
    _run("bento.py", ["experiment=smoke_lm"], env, timeout=240)
    bento = f"{LM_NAME}:latest"
    open_server = _start(env, tmp / "open.log", bento)
    keyed = _start({**env, "TUNESHIP_API_KEY": API_KEY}, tmp / "keyed.log", bento)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        _wait_ready(open_server, deadline)
        _wait_ready(keyed, deadline)
        yield Served(open_server, keyed, env["MLFLOW_TRACKING_URI"], tmp / "bentoml")
    finally:
        _stop(open_server)
        _stop(keyed)


@pytest.fixture(scope="session")
def client(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.open.url, timeout=30) as http:
        yield http
