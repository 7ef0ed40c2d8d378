"""Platform mode end to end (bentos/platform_mode.py, `make serve-platform`): one base URL for
inference, files and fine-tuning jobs. A real `bentoml serve` of the smoke_lm bento (conftest's
`served_lm` builds it) started again with TUNESHIP_JOBS_CONFIG, a real jobs worker, the official
`openai` client: upload → job → succeeded → `models.list()` has `fine_tuned_model` → a chat
completion from it, with no restart. The same for the classifier service (conftest's `served`
smoke bento): a classification job's model answers `POST /classify` with `"model"`.

The allow-listed job model trains on exactly the served base's weights (the smoke_lm pipeline's
`base_model/` folder: `model.pretrained=<it>`, `model.from_config=null`), so its adapter carries
the served base's SHA-256 and the service loads it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from omegaconf import OmegaConf

from tests.integration.conftest import (
    API_KEY,
    LM_NAME,
    NAME,
    READY_TIMEOUT_S,
    ROOT,
    Served,
    Server,
    _start,
    _stop,
    _wait_ready,
    isolated_env,
)
from tests.integration.test_jobs import sst2_csv
from tuneship.jobs.config import default_path, hash_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ALICE = "sk-alice-platform"
FINAL = ("succeeded", "failed", "cancelled")
PIRATE = ROOT / "tests" / "fixtures" / "pirate.jsonl"


class Platform:
    def __init__(self, server: Server, worker: subprocess.Popen, root: Path) -> None:
        self.server, self.worker, self.root = server, worker, root
        self.url = f"{server.url}/v1"

    def client(self, key: str = API_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=60)

    def logs(self) -> str:
        parts = [p.read_text(errors="replace")[-3000:] for p in
                 [self.server.log, self.root / "worker.log",
                  *sorted((self.root / "jobs" / "work").glob("*/job.log"))] if p.is_file()]
        return "\n---\n".join(parts)


def jobs_config(root: Path, base_folder: str | None) -> Path:
    """conf/jobs/default.yaml under `root`, owner alice, `tiny-llama-chat` on the served base."""
    cfg = OmegaConf.load(default_path())
    cfg.state_dir = str(root / "jobs")
    cfg.keys = [{"owner": "alice", "sha256": hash_key(ALICE)}]
    cfg.executor.poll_s = 0.2
    if base_folder is not None:
        cfg.models["tiny-llama-chat"].overrides = [
            *cfg.models["tiny-llama-chat"].overrides,
            f"model.pretrained={base_folder}", "model.from_config=null", "model.tokenizer=null"]
    path = root / "jobs.yaml"
    OmegaConf.save(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), path)
    return path


@pytest.fixture(scope="module")
def platform(served_lm: Served, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("platform")
    store = served_lm.bentoml_home.parent  # served_lm's own MLflow store, outputs, BentoML home
    base = json.loads((store / "outputs" / "smoke_lm" / "model" / "base_model.json").read_text())
    with platform_of(store, root, jobs_config(root, base["path"]), f"{LM_NAME}:latest") as p:
        yield p


@pytest.fixture(scope="module")
def classifier_platform(served: Served, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("platform_classifier")
    store = served.bentoml_home.parent  # served's own MLflow store and BentoML home
    with platform_of(store, root, jobs_config(root, None), f"{NAME}:latest",
                     {"TUNESHIP_MAX_NAMED_CLASSIFIERS": "1"}) as p:
        yield p


@contextlib.contextmanager
def platform_of(store: Path, root: Path, config: Path, bento: str,
                extra: dict[str, str] | None = None):
    """`bentoml serve <bento>` in platform mode over `store`, with a jobs worker.

    It serves from a copy of the store's BentoML home: `bentoml serve` empties its home's
    Prometheus multiprocess folder at start, which would wipe the metrics of the session's
    servers that share the original (tests after this one count on them)."""
    env = {**isolated_env(store), "TUNESHIP_JOBS_CONFIG": str(config), **(extra or {})}
    home = root / "bentoml"
    shutil.copytree(env["BENTOML_HOME"], home, symlinks=True,
                    ignore=shutil.ignore_patterns("prometheus_multiproc_dir"))
    env["BENTOML_HOME"] = str(home)
    for name in ("TUNESHIP_JOBS_DB", "TUNESHIP_JOBS_DIR", "TUNESHIP_JOBS_API_KEY",
                 "TUNESHIP_PLATFORM", "TUNESHIP_LLM_REGISTRY_POLL_S"):
        env.pop(name, None)
    with (root / "worker.log").open("w") as out:
        worker = subprocess.Popen([sys.executable, "pipelines/jobs_worker.py", "--config",
                                   str(config)], cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    server = _start({**env, "TUNESHIP_API_KEY": API_KEY}, root / "platform.log", bento)
    p = Platform(server, worker, root)
    try:
        _wait_ready(server, time.monotonic() + READY_TIMEOUT_S)
        assert worker.poll() is None, p.logs()
        yield p
    finally:
        _stop(server)
        _stop(Server("", worker, root / "worker.log"))


def test_a_job_model_is_served_on_the_same_url_without_a_restart(platform):
    c = platform.client()  # the service key: inference, and the jobs owner `default`
    base = c.models.list().data[0].id
    f = c.files.create(file=PIRATE.open("rb"), purpose="fine-tune")
    assert f.rows == 48 and f.kind == "chat"
    created = time.monotonic()
    job = c.fine_tuning.jobs.create(model="tiny-llama-chat", training_file=f.id, suffix="pirate",
                                    method={"type": "supervised", "supervised": {
                                        "hyperparameters": {"n_epochs": 1}}})
    deadline = created + 300
    while (job := c.fine_tuning.jobs.retrieve(job.id)).status not in FINAL:
        assert time.monotonic() < deadline, f"{job.id} still {job.status}\n{platform.logs()}"
        time.sleep(0.3)
    succeeded = time.monotonic()
    assert job.status == "succeeded", (job.error, platform.logs())
    model = job.fine_tuned_model
    assert model == f"ft-tiny-llama-chat-pirate-{job.id.removeprefix('ftjob-')}"

    while model not in {m.id for m in c.models.list()}:  # the registry poll (2 s) loads it
        assert time.monotonic() < succeeded + 30, (c.models.list(), platform.logs())
        time.sleep(0.2)
    listed = time.monotonic()
    card = c.models.retrieve(model)
    assert card.parent == base and card.root.startswith(f"{model}/")
    answer = c.chat.completions.create(model=model, max_tokens=8, temperature=0,
                                       messages=[{"role": "user", "content": "Hello"}])
    assert answer.model == model and answer.choices[0].message.content is not None
    assert answer.usage.completion_tokens >= 1
    print(f"\nplatform: create→succeeded {succeeded - created:.1f} s, succeeded→listed "
          f"{listed - succeeded:.1f} s, create→first answer {time.monotonic() - created:.1f} s")
    served = httpx.get(f"{platform.server.url}/model", timeout=10,
                       headers={"authorization": f"Bearer {API_KEY}"}).json()["served"]
    assert any(k.startswith(f"{model}/") for k in served["registered"]), served


def test_inference_keeps_its_key_and_owners_keys_work_for_jobs(platform):
    alice = platform.client(ALICE)
    assert list(alice.files.list()) == []  # alice's own files (the service key's are not hers)
    f = alice.files.create(file=PIRATE.open("rb"), purpose="fine-tune")
    assert [x.id for x in alice.files.list()] == [f.id]
    assert f.id not in {x.id for x in platform.client().files.list()}
    alice.files.delete(f.id)
    with pytest.raises(openai.AuthenticationError):
        alice.completions.create(model=LM_NAME, prompt="ROMEO:", max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        platform.client("sk-wrong").completions.create(model=LM_NAME, prompt="ROMEO:",
                                                       max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        platform.client("sk-wrong").fine_tuning.jobs.list()
    ok = platform.client().completions.create(model=LM_NAME, prompt="ROMEO:", max_tokens=2)
    assert ok.choices[0].text is not None


# --- the classifier service in platform mode ------------------------------------------------------


def classify(p: Platform, body: dict, key: str = API_KEY) -> httpx.Response:
    return httpx.post(f"{p.server.url}/classify", json=body, timeout=60,
                      headers={"authorization": f"Bearer {key}"})


def test_a_classification_job_answers_classify_by_name(classifier_platform, tmp_path):
    p = classifier_platform
    c = p.client()
    f = c.files.create(file=sst2_csv(tmp_path).open("rb"), purpose="fine-tune")
    jobs = [c.fine_tuning.jobs.create(model="tiny-bert-classifier", training_file=f.id,
                                      suffix=suffix, hyperparameters={"n_epochs": 1})
            for suffix in ("one", "two")]
    deadline = time.monotonic() + 300
    done = []
    for job in jobs:
        while (job := c.fine_tuning.jobs.retrieve(job.id)).status not in FINAL:
            assert time.monotonic() < deadline, f"{job.id} still {job.status}\n{p.logs()}"
            time.sleep(0.3)
        assert job.status == "succeeded", (job.error, p.logs())
        done.append(job.fine_tuned_model)

    texts = ["a fine film", "a dull mess"]
    own = classify(p, {"texts": texts})
    assert own.status_code == 200 and own.json()["model"]["name"] == NAME
    assert classify(p, {"texts": texts, "model": NAME}).json()["model"]["name"] == NAME
    for name in done:
        answer = classify(p, {"texts": texts, "model": name, "all_scores": True})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"]["name"] == name and body["model"]["version"] == "1"
        assert [set(x["scores"]) for x in body["predictions"]] == [{"negative", "positive"}] * 2
        pinned = classify(p, {"texts": texts, "model": f"{name}/1", "all_scores": True}).json()
        assert pinned["predictions"] == body["predictions"]
    card = httpx.get(f"{p.server.url}/model", timeout=30,
                     headers={"authorization": f"Bearer {API_KEY}"}).json()
    assert card["runtime"]["named_classifiers"] == {"loaded": [f"{done[1]}/1"], "capacity": 1}

    for body, status in (({"texts": texts, "model": "ft-nothing-like-it"}, 404),
                         ({"texts": texts, "model": f"{done[0]}/7"}, 404),
                         ({"texts": texts, "model": "tuneship-other"}, 404),
                         ({"texts": texts, "model": ""}, 400)):
        answer = classify(p, body)
        assert answer.status_code == status, (body, answer.text)
        assert "error" in answer.json()
    assert classify(p, {"texts": texts, "model": done[0]}, key="sk-wrong").status_code == 401
