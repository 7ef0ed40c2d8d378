"""The guard in platform mode (bentos/guards.py, bentos/platform_mode.py), in process: the jobs
routes mounted on a `/v1` app beside an inference route, behind `Guard` with the service key.
The inference route keeps the service key; the delegated jobs routes check owners' keys
themselves and take multipart uploads; a body streamed past the bound is a 413."""

from __future__ import annotations

import json

import openai
import pytest
from omegaconf import OmegaConf
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from tests.bento_modules import bento
from tuneship.jobs.config import default_path, hash_key

pytestmark = pytest.mark.unit
SERVICE_KEY = "sk-service-7"
KEYS = {"alice": "sk-alice-1", "bob": "sk-bob-2"}


guards, platform_mode = bento("guards"), bento("platform_mode")


def chat_file(n: int = 12) -> bytes:
    rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


async def completions(request: Request) -> JSONResponse:
    return JSONResponse({"object": "text_completion", "echo": json.loads(await request.body())})


@pytest.fixture
def app(tmp_path, monkeypatch):
    cfg = OmegaConf.load(default_path())
    cfg.state_dir = str(tmp_path / "jobs")
    cfg.limits.max_file_bytes = 20_000
    cfg.keys = [{"owner": o, "sha256": hash_key(k)} for o, k in KEYS.items()]
    config = tmp_path / "jobs.yaml"
    OmegaConf.save(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), config)
    monkeypatch.setenv(platform_mode.ENV_CONFIG, str(config))
    monkeypatch.setenv("TUNESHIP_API_KEY", SERVICE_KEY)
    monkeypatch.delenv("TUNESHIP_JOBS_API_KEY", raising=False)
    monkeypatch.delenv("TUNESHIP_JOBS_DB", raising=False)
    monkeypatch.delenv("TUNESHIP_JOBS_DIR", raising=False)
    v1 = Starlette(routes=[Route("/completions", completions, methods=["POST"])])
    limit = platform_mode.mount(v1)
    assert limit == 20_000 + 2 * 64 * 1024
    outer = Starlette(routes=[Mount("/v1", app=v1)])
    guarded = guards.Guard(outer, api_key=SERVICE_KEY, max_body_bytes=1000,
                           delegated_prefixes=platform_mode.DELEGATED_PREFIXES,
                           delegated_max_body_bytes=limit)
    with TestClient(guarded) as http:
        yield http


def oai(http: TestClient, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http,
                         max_retries=0)


def test_inference_routes_keep_the_service_key(app):
    body = {"model": "m", "prompt": "hi"}
    assert app.post("/v1/completions", json=body).status_code == 401
    for owner_key in KEYS.values():  # a jobs owner's key is not the inference key
        answer = app.post("/v1/completions", json=body,
                          headers={"authorization": f"Bearer {owner_key}"})
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "invalid_api_key"
    ok = app.post("/v1/completions", json=body, headers={"authorization": f"Bearer {SERVICE_KEY}"})
    assert ok.status_code == 200 and ok.json()["echo"] == body
    big = app.post("/v1/completions", json={"prompt": "x" * 2000},
                   headers={"authorization": f"Bearer {SERVICE_KEY}"})
    assert big.status_code == 413  # the inference body limit still applies there
    not_delegated = app.post("/v1/filesystem", json={})
    assert not_delegated.status_code == 401


def test_jobs_routes_take_owner_keys_and_multipart_uploads(app):
    alice, bob = oai(app, KEYS["alice"]), oai(app, KEYS["bob"])
    f = alice.files.create(file=("chat.jsonl", chat_file()), purpose="fine-tune")  # > 1000 bytes
    assert f.bytes > 1000 and f.filename == "chat.jsonl"
    assert [x.id for x in alice.files.list()] == [f.id]
    assert list(bob.files.list()) == []
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(f.id)
    job = alice.fine_tuning.jobs.create(model="tiny-llama-chat", training_file=f.id)
    assert job.status == "queued" and job.organization_id == "alice"
    assert [j.id for j in alice.fine_tuning.jobs.list()] == [job.id]
    assert list(bob.fine_tuning.jobs.list()) == []
    # The service key is the jobs owner `default` while TUNESHIP_JOBS_API_KEY is unset.
    assert list(oai(app, SERVICE_KEY).files.list()) == []
    with pytest.raises(openai.AuthenticationError) as err:
        oai(app, "sk-nobody").files.list()
    assert err.value.code == "invalid_api_key"
    assert app.get("/v1/fine_tuning/jobs").json()["error"]["code"] == "missing_api_key"


def test_jobs_upload_limits_are_the_jobs_apis(app):
    headers = {"authorization": f"Bearer {KEYS['alice']}"}
    big = app.post("/v1/files", headers=headers, data={"purpose": "fine-tune"},
                   files={"file": ("big.jsonl", chat_file(400))})
    assert big.status_code == 400 and "over the limit of 20,000 bytes" in big.json()["error"]["message"]

    def chunks():  # no Content-Length: only the bytes streamed can tell
        yield b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n"
        for _ in range(300):
            yield b"y" * 1000

    streamed = app.post("/v1/files", headers={**headers, "content-type":
                                              "multipart/form-data; boundary=x"}, content=chunks())
    assert streamed.status_code == 413
    assert streamed.json()["error"]["code"] == "request_too_large"


def test_job_models_are_served_by_their_bare_name():
    names = {"ft-a-1/1": "ft-a-1/1", "ft-a-1@challenger": "ft-a-1/1",
             "ft-b-2/1": "ft-b-2/1", "ft-b-2/2": "ft-b-2/2", "ft-b-2@champion": "ft-b-2/1",
             "ft-c-3/1": "ft-c-3/1", "ft-c-3": "ft-c-3/1", "poet/4": "poet/4"}
    assert platform_mode.job_names(names, "champion") == {"ft-a-1": "ft-a-1/1",
                                                          "ft-b-2": "ft-b-2/1"}


def test_platform_mode_off_changes_nothing(monkeypatch):
    for name in (platform_mode.ENV_CONFIG, platform_mode.ENV_ON):
        monkeypatch.delenv(name, raising=False)
    assert platform_mode.mount(Starlette()) is None
    assert platform_mode.follow_refs(["x@*"]) == ["x@*"]
    assert platform_mode.poll_s(0.0) == 0.0
    assert platform_mode.follower_class() is platform_mode.follow.Follower
    monkeypatch.setenv(platform_mode.ENV_ON, "1")
    assert platform_mode.follow_refs(["x@*"]) == ["x@*", "ft-*@*"]
    assert platform_mode.poll_s(0.0) == platform_mode.POLL_S and platform_mode.poll_s(7) == 7
    assert platform_mode.follower_class() is platform_mode.JobsFollower
