"""The ray executor end to end: a real Ray head (`RAY_ADDRESS`, else one started here with
`ray start --head`), `pipelines/jobs_api.py` and `pipelines/jobs_worker.py` (`executor.kind:
ray`) as real processes, the official `openai` client for our API and Ray's own
`JobSubmissionClient` to look at (and stop) the Ray jobs, tiny random-init base models.

Without a head that can be reached or started the Ray tests skip, saying why; with
TUNESHIP_TEST_REQUIRE_RAY=1 (set by .ci/run) that is a failure instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT
from tests.integration.test_jobs import (
    KEYS,
    Platform,
    _stop,
    chat_file,
    events,
    free_port,
    gone,
    wait_checkpoint,
    wait_for,
)
from tuneship.errors import TuneshipError
from tuneship.jobs.config import default_path, hash_key, load_settings

pytestmark = [pytest.mark.integration]
REQUIRED = os.environ.get("TUNESHIP_TEST_REQUIRE_RAY") == "1"
SECRET = "s3cret-value-only-for-the-launch-file"  # a forwarded variable that Ray must never show
HEAD_START_S = 120


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"TUNESHIP_TEST_REQUIRE_RAY=1 but {reason}")
    pytest.skip(reason)


def ray_client(address: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def wait_for_head(address: str, timeout: float, proc: subprocess.Popen | None = None) -> str | None:
    """None once the Job Submission API answers; else why not."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ray_client(address)
            return None
        except ConnectionError as err:
            if proc is not None and proc.poll() is not None:
                return f"`ray start --head` exited with {proc.returncode}"
            if time.monotonic() > deadline:
                return f"no Ray head answers at {address} ({err})"
            time.sleep(1)


@contextlib.contextmanager
def local_head() -> Iterator[str]:
    """`ray start --head --block` on free ports in its own session; the group stopped after."""
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths
    dashboard = free_port()
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
           f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
           f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           "--num-cpus=2", "--object-store-memory=200000000", "--disable-usage-stats",
           f"--temp-dir={temp}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with (temp / "head.log").open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        if why := wait_for_head(address, HEAD_START_S, proc):
            unavailable(f"{why}:\n{(temp / 'head.log').read_text()[-2000:]}")
        yield address
    finally:
        stop_group(proc)
        shutil.rmtree(temp, ignore_errors=True)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the `ray start --block` leader (it stops its processes), then SIGKILL the group."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """RAY_ADDRESS (the head CI starts), else a head started here (~15 s)."""
    if importlib.util.find_spec("ray") is None:
        unavailable("ray is not installed (pip install 'ray[default]==2.60.0')")
    if address := os.environ.get("RAY_ADDRESS"):
        if why := wait_for_head(address, 30):
            unavailable(why)
        yield address
        return
    with local_head() as address:
        yield address


@pytest.fixture(scope="module")
def ray_platform(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """API + worker with `executor.kind: ray`, two runs per job at most, a temporary store."""
    root = tmp_path_factory.mktemp("jobs_ray")
    cfg = OmegaConf.load(default_path())
    cfg.state_dir = str(root / "state")
    cfg.port = free_port()
    cfg.keys = [{"owner": o, "sha256": hash_key(k)} for o, k in KEYS.items()]
    cfg.executor.update(kind="ray", ray_address=ray_address, max_attempts=2, poll_s=0.2)
    config = root / "jobs.yaml"
    OmegaConf.save(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), config)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "TUNESHIP_ARTIFACTS": str(root / "mlartifacts"), "TUNESHIP_OUTPUT_DIR": str(root / "out"),
           "TUNESHIP_CACHE": str(ROOT / ".cache"), "TUNESHIP_TEST_SECRET": SECRET}
    for name in ("TUNESHIP_JOBS_DB", "TUNESHIP_JOBS_DIR", "TUNESHIP_JOBS_API_KEY"):
        env.pop(name, None)
    api = subprocess.Popen([sys.executable, "pipelines/jobs_api.py", "--config", str(config)],
                           cwd=ROOT, env=env, stdout=(root / "api.log").open("w"),
                           stderr=subprocess.STDOUT, start_new_session=True)
    p = Platform(root, config, env, f"http://127.0.0.1:{cfg.port}/v1", api)
    p.start_worker()
    try:
        deadline = time.monotonic() + 60
        while True:
            assert api.poll() is None and p.worker.poll() is None, p.logs()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{cfg.port}/healthz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, p.logs()
            time.sleep(0.2)
        yield p
    finally:
        _stop(p.worker)
        _stop(api)


def runner_pids(job_id: str) -> list[int]:
    """This job's runner processes (started by Ray, not by us)."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"tuneship.jobs.runner" in cmdline and job_id.encode() in cmdline:
                found.append(int(proc.name))
    return found


def ray_status(address: str, submission_id: str, timeout: float = 60,
               until: tuple[str, ...] = ("SUCCEEDED", "FAILED", "STOPPED")) -> str:
    """Ray's status of a run once it is one of `until` (or the last one seen at the timeout)."""
    client = ray_client(address)
    deadline = time.monotonic() + timeout
    while (status := str(client.get_job_status(submission_id).value)) not in until:
        if time.monotonic() > deadline:
            break
        time.sleep(0.3)
    return status


def wait_event(p: Platform, job_id: str, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in m for m in events(p, job_id)):
        assert time.monotonic() < deadline, (text, events(p, job_id), p.logs())
        time.sleep(0.2)


def create(p: Platform, tmp_path: Path, epochs: int):
    c = p.client()
    f = c.files.create(file=chat_file(tmp_path).open("rb"), purpose="fine-tune")
    return c.fine_tuning.jobs.create(model="tiny-llama-chat", training_file=f.id, suffix="ray",
                                     hyperparameters={"n_epochs": epochs})


# --- settings, no Ray needed ------------------------------------------------------------------


@pytest.mark.parametrize(("override", "message"), [
    ("executor.kind=slurm", "executor.kind: Input should be 'local' or 'ray'"),
    ("executor.ray_address=127.0.0.1:8265", "executor.ray_address: Value error, must be the Ray "
     "dashboard's URL"),
    ("executor.ray_num_cpus=0", "executor.ray_num_cpus: Input should be greater than 0"),
    ("executor.ray_python=python3", "executor.ray_python: Value error, must be an absolute path"),
    ("executor.ray_runtime_env={env_vars:{TOKEN:x}}", "env_vars are shown in Ray's job info"),
])
def test_bad_ray_settings_are_refused_with_the_reason(override: str, message: str) -> None:
    with pytest.raises(TuneshipError, match="bad jobs setting") as err:
        load_settings(overrides=["executor.kind=ray", override])
    assert message in str(err.value)


def test_ray_settings_default_to_the_local_dashboard_and_keep_local_the_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    settings = load_settings()
    assert settings.executor.kind == "local"
    assert settings.executor.ray_address == "http://127.0.0.1:8265"
    assert load_settings(overrides=["executor.kind=ray"]).executor.ray_num_cpus == 1


def test_ray_worker_without_a_head_exits_with_a_clear_error(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    done = subprocess.run([sys.executable, "pipelines/jobs_worker.py", "executor.kind=ray",
                           f"executor.ray_address=http://127.0.0.1:{port}",
                           f"state_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"no Ray dashboard answers at http://127.0.0.1:{port}" in done.stderr
    assert "ray start --head" in done.stderr


# --- against a real head ---------------------------------------------------------------------


@pytest.mark.slow
def test_ray_job_succeeds_and_registers_its_model(ray_platform, ray_address, tmp_path):
    job = create(ray_platform, tmp_path, epochs=1)
    done = wait_for(ray_platform, job.id)
    assert done.status == "succeeded", (done.error, ray_platform.logs())
    sub = f"{job.id}-1"
    log = events(ray_platform, job.id)
    for expected in ("Fine-tuning job started", f"Submitted to Ray as {sub} (1 CPU)",
                     "Stage train: started", "Checkpoint created at step 2",
                     f"New fine-tuned model created: {done.fine_tuned_model}",
                     "The job has successfully completed"):
        assert expected in log, log
    assert ray_status(ray_address, sub) == "SUCCEEDED"
    info = ray_client(ray_address).get_job_info(sub)
    assert info.metadata["tuneship_job_id"] == job.id and info.metadata["tuneship_attempt"] == "1"
    assert info.entrypoint.endswith(f"-m tuneship.jobs.runner {job.id}")
    assert set(info.runtime_env["env_vars"]) == {"TUNESHIP_JOBS_LAUNCH"}
    shown = json.dumps([info.entrypoint, info.metadata, info.runtime_env])
    for secret in (SECRET, load_settings(ray_platform.config).database_url, hash_key(KEYS["alice"])):
        assert secret not in shown
    version = ray_platform.mlflow().get_model_version(done.fine_tuned_model, "1")
    assert version.tags["job.id"] == job.id
    work = ray_platform.root / "state" / "work" / job.id
    # the outcome is the runner's; the executor notices Ray's end a poll later and then cleans up
    deadline = time.monotonic() + 60
    while (work / "launch.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (work / "launch.json").exists()
    assert f"--- Ray job {sub} ---" in (work / "job.log").read_text()


@pytest.mark.slow
def test_cancel_stops_the_ray_job_and_registers_nothing(ray_platform, ray_address, tmp_path):
    c = ray_platform.client()
    job = create(ray_platform, tmp_path, epochs=20)
    wait_checkpoint(ray_platform, job.id, 2)
    sub = f"{job.id}-1"
    assert ray_status(ray_address, sub, timeout=0) == "RUNNING"
    pids = runner_pids(job.id)
    assert pids, "no runner process for the job"
    launch_file = ray_platform.root / "state" / "work" / job.id / "launch.json"
    assert stat.S_IMODE(launch_file.stat().st_mode) == 0o600
    assert SECRET in launch_file.read_text()  # forwarded here, and only here

    assert c.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    wait_event(ray_platform, job.id, f"Ray job {sub} stopped; nothing was registered")
    assert ray_status(ray_address, sub, timeout=0) == "STOPPED"
    assert all(gone(pid) for pid in pids), "the runner outlived its stopped Ray job"
    assert c.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert c.fine_tuning.jobs.retrieve(job.id).fine_tuned_model is None
    names = [m.name for m in ray_platform.mlflow().search_registered_models()]
    assert ray_platform.store().job(job.id).registered_model not in names
    assert not launch_file.exists()


@pytest.mark.slow
def test_runner_killed_on_the_ray_node_resumes_from_its_checkpoint(ray_platform, ray_address,
                                                                   tmp_path):
    job = create(ray_platform, tmp_path, epochs=4)
    wait_checkpoint(ray_platform, job.id, 4)
    run_file = ray_platform.root / "state" / "work" / job.id / "pipeline" / "run.json"
    run_id = json.loads(run_file.read_text())["run_id"]
    for pid in runner_pids(job.id):
        os.kill(pid, signal.SIGKILL)
    assert ray_status(ray_address, f"{job.id}-1") == "FAILED"

    done = wait_for(ray_platform, job.id)
    assert done.status == "succeeded", (done.error, ray_platform.logs())
    log = events(ray_platform, job.id)
    assert any(m.startswith(f"The Ray job {job.id}-1 ended FAILED (Job entrypoint command failed "
                            "with exit code ") and "resumes from its checkpoint at step" in m
               for m in log), log
    assert "Fine-tuning job resumed (run 2)" in log and f"Submitted to Ray as {job.id}-2 (1 CPU)" in log
    assert ray_status(ray_address, f"{job.id}-2") == "SUCCEEDED"
    assert ray_platform.store().job(job.id).attempts == 2
    assert json.loads(run_file.read_text())["run_id"] == run_id  # one MLflow run
    versions = ray_platform.mlflow().search_model_versions(f"name='{done.fine_tuned_model}'")
    assert [str(v.version) for v in versions] == ["1"]
    train = json.loads((run_file.parent / "model" / "train_result.json").read_text())
    assert train["resumed_from_step"] >= 4


@pytest.mark.slow
def test_runs_stopped_from_ray_fail_the_job_after_max_attempts(ray_platform, ray_address, tmp_path):
    job = create(ray_platform, tmp_path, epochs=20)
    client = ray_client(ray_address)
    for attempt in (1, 2):  # executor.max_attempts=2 in this module
        sub = f"{job.id}-{attempt}"
        wait_event(ray_platform, job.id, f"Submitted to Ray as {sub}", timeout=120)
        deadline = time.monotonic() + 120
        while ray_status(ray_address, sub, timeout=0, until=("RUNNING",)) != "RUNNING":
            assert time.monotonic() < deadline, ray_platform.logs()
            time.sleep(0.3)
        assert client.stop_job(sub)
    done = wait_for(ray_platform, job.id, timeout=60)
    assert done.status == "failed", ray_platform.logs()
    assert done.error.code == "job_interrupted"
    assert done.error.message.startswith(f"the Ray job {job.id}-2 ended STOPPED (Job was "
                                         "intentionally stopped.) before the job finished, 2 time(s)")
    assert runner_pids(job.id) == []


@pytest.mark.slow
def test_worker_killed_attaches_to_its_ray_job_when_started_again(ray_platform, ray_address,
                                                                  tmp_path):
    job = create(ray_platform, tmp_path, epochs=3)
    wait_checkpoint(ray_platform, job.id, 2)
    sub = f"{job.id}-1"
    os.kill(ray_platform.worker.pid, signal.SIGKILL)
    ray_platform.worker.wait(timeout=10)
    time.sleep(2)
    assert ray_status(ray_address, sub, timeout=0) == "RUNNING"  # the run goes on without us
    assert ray_platform.client().fine_tuning.jobs.retrieve(job.id).status == "running"

    ray_platform.start_worker()
    done = wait_for(ray_platform, job.id)
    assert done.status == "succeeded", (done.error, ray_platform.logs())
    log = events(ray_platform, job.id)
    assert any(m.startswith(f"Attached to Ray job {sub} (") for m in log), log
    assert ray_platform.store().job(job.id).attempts == 1
    with pytest.raises(RuntimeError, match="does not exist"):
        ray_client(ray_address).get_job_info(f"{job.id}-2")  # never submitted twice
