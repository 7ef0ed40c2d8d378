"""The Files + fine-tuning jobs API through the official `openai` client, against a real uvicorn
server on a free loopback port (in a thread; no worker: jobs stay queued)."""

import json
import socket
import threading
import time

import openai
import pytest
import uvicorn

from tuneship.jobs.api import standalone_app
from tuneship.jobs.config import KeyEntry, hash_key, load_settings

pytestmark = pytest.mark.unit
KEYS = {"alice": "sk-alice-1", "bob": "sk-bob-2", "carol": "sk-carol-3"}


def chat_file(n: int = 3) -> bytes:
    rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jobs_api")
    settings = load_settings(None, [f"state_dir={tmp}", "limits.min_lines=2",
                                    "limits.max_file_bytes=20000", "limits.max_queued_jobs=2",
                                    "limits.max_stored_bytes=30000"])
    settings = settings.model_copy(update={"keys": [KeyEntry(owner=o, sha256=hash_key(k))
                                                    for o, k in KEYS.items()]})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(standalone_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


def client(base_url: str, owner: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=KEYS[owner], max_retries=0)


def upload(c: openai.OpenAI, data: bytes, name: str = "train.jsonl"):
    return c.files.create(file=(name, data), purpose="fine-tune")


def test_upload_list_retrieve_content_delete(base_url):
    c = client(base_url)
    data = chat_file()
    f = upload(c, data)
    assert (f.object, f.bytes, f.purpose, f.status, f.filename) == ("file", len(data), "fine-tune",
                                                                     "processed", "train.jsonl")
    assert f.id.startswith("file-") and c.files.retrieve(f.id).bytes == len(data)
    assert f.id in [x.id for x in c.files.list()]
    assert c.files.content(f.id).read() == data
    assert c.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(f.id)


@pytest.mark.parametrize(("data", "name", "expected"), [
    (b"this is not json\n", "a.jsonl", "line 1: not valid JSON"),
    (chat_file(2) + b'{"question": "q", "answer": "a"}\n', "a.jsonl",
     "line 3: expected a 'messages' list"),
    (b"", "a.jsonl", "the file is empty"),
    (chat_file(400), "a.jsonl", "over the limit of 20,000 bytes"),
    (b'{"text": "good", "label": "pos"}\n{"text": "bad"}\n', "a.jsonl", "line 2: 'label' is missing"),
    (b"text,label\ngood,pos\nbad,\n", "a.csv", "line 3: 'label' is empty"),
])
def test_a_bad_file_is_a_400_naming_the_line(base_url, data, name, expected):
    with pytest.raises(openai.BadRequestError) as err:
        upload(client(base_url), data, name)
    error = err.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert expected in error["message"] and error["message"].startswith(name)
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "file",
                                                              "invalid_file")


def test_a_missing_or_wrong_key_is_a_401(base_url):
    with pytest.raises(openai.AuthenticationError) as err:
        openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0).files.list()
    assert err.value.response.json()["error"]["code"] == "invalid_api_key"
    import httpx
    answer = httpx.get(f"{base_url}/fine_tuning/jobs")
    assert answer.status_code == 401 and "Bearer" in answer.json()["error"]["message"]


def test_job_requests_are_checked(base_url):
    c = client(base_url)
    chat = upload(c, chat_file()).id
    cases = [
        ({"model": "gpt-4o-mini"}, "model", "is not available for fine-tuning"),
        ({"model": "/tmp/some/path"}, "model", "choose one of"),
        ({"model": "tiny-llama-chat", "hyperparameters": {"n_epochs": 0}},
         "hyperparameters.n_epochs", "from 1 to 20"),
        ({"model": "tiny-llama-chat",
          "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": "x"}}}},
         "method.supervised.hyperparameters.batch_size", "batch_size"),
        ({"model": "tiny-llama-chat", "method": {"type": "dpo"}}, "method.type", "only 'supervised'"),
        ({"model": "tiny-llama-chat", "suffix": "no spaces please"}, "suffix", "1-40 characters"),
        ({"model": "tiny-bert-classifier"}, "training_file", "needs 'text'/'label' rows"),
    ]
    for extra, param, message in cases:
        with pytest.raises(openai.BadRequestError) as err:
            c.fine_tuning.jobs.create(**{"training_file": chat, **extra})
        error = err.value.response.json()["error"]
        assert error["param"] == param and message in error["message"], (extra, error)
    with pytest.raises(openai.NotFoundError):
        c.fine_tuning.jobs.create(model="tiny-llama-chat", training_file="file-nope")


def test_owners_cannot_see_each_others_files_or_jobs(base_url):
    alice, bob = client(base_url, "alice"), client(base_url, "bob")
    f = upload(alice, chat_file())
    job = alice.fine_tuning.jobs.create(model="tiny-llama-chat", training_file=f.id,
                                        metadata={"who": "alice"})
    assert job.status == "queued" and job.organization_id == "alice"
    calls = [lambda: bob.files.retrieve(f.id), lambda: bob.files.content(f.id),
             lambda: bob.files.delete(f.id), lambda: bob.fine_tuning.jobs.retrieve(job.id),
             lambda: bob.fine_tuning.jobs.cancel(job.id),
             lambda: list(bob.fine_tuning.jobs.list_events(job.id)),
             lambda: list(bob.fine_tuning.jobs.checkpoints.list(job.id)),
             lambda: bob.fine_tuning.jobs.create(model="tiny-llama-chat", training_file=f.id)]
    for call in calls:
        with pytest.raises(openai.NotFoundError):
            call()
    assert job.id not in [j.id for j in bob.fine_tuning.jobs.list()]
    assert f.id not in [x.id for x in bob.files.list()]
    assert alice.fine_tuning.jobs.retrieve(job.id).status == "queued"
    with pytest.raises(openai.APIStatusError) as err:  # in use by a job that has not ended
        alice.files.delete(f.id)
    assert err.value.status_code == 409
    alice.fine_tuning.jobs.cancel(job.id)


def test_cancel_while_queued_then_cancel_again_is_a_400(base_url):
    c = client(base_url)
    job = c.fine_tuning.jobs.create(model="tiny-llama-chat", training_file=upload(c, chat_file()).id)
    cancelled = c.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    messages = [e.message for e in c.fine_tuning.jobs.list_events(job.id)]
    assert messages[0] == "Job cancelled by the user" and messages[-1].startswith("Created")
    with pytest.raises(openai.BadRequestError, match="already cancelled"):
        c.fine_tuning.jobs.cancel(job.id)


def test_limits_on_waiting_jobs_and_stored_bytes_are_429(base_url):
    c = client(base_url, "carol")
    f = upload(c, chat_file())
    jobs = [c.fine_tuning.jobs.create(model="tiny-llama-chat", training_file=f.id) for _ in range(2)]
    with pytest.raises(openai.RateLimitError) as err:
        c.fine_tuning.jobs.create(model="tiny-llama-chat", training_file=f.id)
    assert err.value.response.json()["error"]["code"] == "queued_jobs_limit"
    c.fine_tuning.jobs.cancel(jobs[0].id)
    c.fine_tuning.jobs.create(model="tiny-llama-chat", training_file=f.id)  # room again
    big = chat_file(150)  # under the 20 kB file limit, over the 30 kB stored once twice
    upload(c, big)
    with pytest.raises(openai.RateLimitError) as err:
        upload(c, big)
    assert err.value.response.json()["error"]["code"] == "storage_limit_exceeded"


def test_job_list_pages_newest_first_and_filters_by_metadata(base_url):
    c = client(base_url, "bob")
    f = upload(c, chat_file())
    made = []
    for i in range(2):
        job = c.fine_tuning.jobs.create(model="tiny-llama-chat", training_file=f.id, seed=i,
                                        metadata={"batch": str(i)},
                                        hyperparameters={"n_epochs": 2})
        made.append(c.fine_tuning.jobs.cancel(job.id))
    first = c.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in first.data] == [made[-1].id] and first.has_more
    assert [j.id for j in c.fine_tuning.jobs.list(limit=1, after=made[-1].id).data] == [made[0].id]
    assert [j.id for j in c.fine_tuning.jobs.list(metadata={"batch": "0"})] == [made[0].id]
    assert made[0].seed == 0 and made[0].hyperparameters.n_epochs == 2
    assert made[0].method.supervised.hyperparameters.n_epochs == 2
