"""The causal-LM bento end to end over real HTTP: smoke_lm trained, gated and registered as
champion (a tiny random Llama + LoRA), imported and built by `pipelines/bento.py`, served by
`bentoml serve` (fixture `served_lm` in conftest.py), then `/generate` and `/generate_stream`
(aliases over the engine that also serves /v1: tests/integration/test_openai.py, which also has
the shedding test, on a server with small engine limits)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.conftest import API_KEY, LM_NAME, Served

# The answers are compared with float32 `generate`: the LLM servers of this session pin
# float32 (auto may pick bfloat16 on a CPU with bf16 units; test_openai checks that one).
os.environ.setdefault("TUNESHIP_LLM_DTYPE", "float32")
pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPT = "ROMEO:\nBut soft, what light"


@pytest.fixture(scope="module")
def lm(served_lm: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served_lm.open.url, timeout=60) as http:
        yield http


def _generate(lm: httpx.Client, **body) -> dict:
    response = lm.post("/generate", json={"prompt": PROMPT, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_model_endpoint_describes_the_registered_champion(lm):
    card = lm.get("/model").json()
    assert (card["name"], card["version"], card["alias"]) == (LM_NAME, "1", "champion")
    assert card["task"] == "text-generation"
    assert card["metrics"]["perplexity"] < card["metrics"]["base_perplexity"]  # the gate's test
    assert card["lineage"]["base_model"] == "tiny-llama"
    assert card["generation"]["max_new_tokens"] == 256
    assert card["generation"]["context_tokens"] > 0


def test_generate_returns_text_reason_and_token_counts(lm):
    body = _generate(lm, max_new_tokens=6)
    usage = body["usage"]
    assert isinstance(body["text"], str)
    assert 1 <= usage["completion_tokens"] <= 6
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["finish_reason"] == ("length" if usage["completion_tokens"] == 6 else "stop")
    assert body["model"] == {"name": LM_NAME, "version": "1", "alias": "champion",
                             "bento_model": lm.get("/model").json()["bento_model"]}


def test_greedy_is_deterministic_and_a_seed_repeats_a_sample(lm):
    assert _generate(lm, max_new_tokens=8)["text"] == _generate(lm, max_new_tokens=8)["text"]
    sampled = {"max_new_tokens": 8, "temperature": 1.5, "top_p": 0.95, "seed": 7}
    assert _generate(lm, **sampled)["text"] == _generate(lm, **sampled)["text"]


def test_default_length_is_the_registered_models(lm):
    # smoke_lm registers max_new_tokens=8 as the model's inference default (conf eval).
    assert _generate(lm)["usage"]["completion_tokens"] <= 8


def test_stop_string_ends_the_text_before_it(lm):
    full = _generate(lm, max_new_tokens=24)["text"]
    middle = full.strip()[len(full.strip()) // 2:][:3]
    assert middle, full
    stopped = _generate(lm, max_new_tokens=24, stop=[middle])
    assert stopped["text"] == full[:full.find(middle)]
    assert stopped["finish_reason"] == "stop"


def test_stream_yields_the_same_text_as_generate(lm):
    whole = _generate(lm, max_new_tokens=16)["text"]
    with lm.stream("POST", "/generate_stream",
                   json={"prompt": PROMPT, "max_new_tokens": 16}) as response:
        assert response.status_code == 200
        pieces = list(response.iter_text())
    assert "".join(pieces) == whole


def _cancelled(lm: httpx.Client) -> float:
    found = re.search(r'^tuneship_llm_requests_total\{[^}]*finish_reason="cancelled"[^}]*\} '
                      r'(\S+)$', lm.get("/metrics").text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_client_that_leaves_mid_stream_cancels_its_generation(lm):
    before = _cancelled(lm)
    with lm.stream("POST", "/generate_stream",
                   json={"prompt": PROMPT, "max_new_tokens": 200}) as response:
        assert response.status_code == 200
        next(response.iter_raw())  # the first piece, then hang up
    deadline = time.monotonic() + 30
    while _cancelled(lm) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _cancelled(lm) == before + 1
    assert _generate(lm, max_new_tokens=3)["usage"]["completion_tokens"] <= 3  # the model is free


def test_concurrent_requests_are_all_answered(lm):
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda n: lm.post("/generate", json={
            "prompt": PROMPT, "max_new_tokens": 4 + n}), range(6)))
    assert [a.status_code for a in answers] == [200] * 6
    assert all(a.json()["usage"]["completion_tokens"] <= 4 + n for n, a in enumerate(answers))


BAD = [
    ({"prompt": ""}, "at least 1 character"),
    ({}, "Field required"),
    ({"prompt": 3}, "valid string"),
    ({"prompt": "x" * 4001}, "at most 4000 characters"),
    ({"prompt": "a", "max_new_tokens": 0}, "greater than or equal to 1"),
    ({"prompt": "a", "max_new_tokens": 257}, "less than or equal to 256"),
    ({"prompt": "a", "max_new_tokens": 2.5}, "valid integer"),
    ({"prompt": "a", "temperature": -0.1}, "greater than or equal to 0"),
    ({"prompt": "a", "temperature": "hot"}, "valid number"),
    ({"prompt": "a", "top_p": 0}, "greater than 0"),
    ({"prompt": "a", "top_p": 1.5}, "less than or equal to 1"),
    ({"prompt": "a", "stop": "\n"}, "valid array"),
    ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "at most 4 items"),
    ({"prompt": "a", "stop": [""]}, "at least 1 character"),
    ({"prompt": "a", "seed": -1}, "greater than or equal to 0"),
    ({"prompt": "a", "top_k": 5}, "Extra inputs are not permitted"),
    ({"prompt": "word " * 700}, "exceeds the model's context"),  # 700 tokens > 256 positions
]


@pytest.mark.parametrize("route", ["/generate", "/generate_stream"])
@pytest.mark.parametrize(("body", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_parameters_get_400_with_the_reason(lm, route, body, message):
    response = lm.post(route, json=body)
    assert response.status_code == 400, response.text
    assert message in json.dumps(response.json())


@pytest.mark.parametrize(("content", "content_type", "status"), [
    (b'{"prompt": "unclosed', "application/json", 400),
    (b"prompt=hello", "application/x-www-form-urlencoded", 415),
    (b'{"prompt": "' + b"a" * 1_100_000 + b'"}', "application/json", 413),
])
def test_malformed_unsupported_and_oversized_bodies(lm, content, content_type, status):
    response = lm.post("/generate", content=content, headers={"content-type": content_type})
    assert response.status_code == status


def test_api_key_guards_generation_but_not_probes(served_lm):
    url = served_lm.keyed.url
    for route in ("/generate", "/generate_stream"):
        assert httpx.post(f"{url}{route}", json={"prompt": "a"}, timeout=30).status_code == 401
    assert httpx.get(f"{url}/model", timeout=30).status_code == 401
    answer = httpx.post(f"{url}/generate", json={"prompt": "a", "max_new_tokens": 2},
                        headers={"authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert answer.status_code == 200, answer.text
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{url}{probe}", timeout=30).status_code == 200


def test_metrics_count_tokens_and_finish_reasons(lm):
    def completion_tokens() -> float:  # over every model_name (the base, each adapter)
        text = lm.get("/metrics").text
        return sum(float(x.split()[-1]) for x in text.splitlines()
                   if x.startswith("tuneship_llm_generation_tokens_total"))

    before = completion_tokens()
    produced = _generate(lm, max_new_tokens=5)["usage"]["completion_tokens"]
    assert completion_tokens() == before + produced
    assert re.search(r'^tuneship_llm_requests_total\{[^}]*finish_reason="length"',
                     lm.get("/metrics").text, re.MULTILINE)
    assert "bentoml_service_request_total" in lm.get("/metrics").text
