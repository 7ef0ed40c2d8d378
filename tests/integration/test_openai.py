"""The OpenAI-compatible routes of the causal-LM bento (/v1, bentos/openai_api.py) over real
HTTP, with the official `openai` client: smoke_lm trained, registered, built and served by
`bentoml serve` (fixture `served_lm` in conftest.py), plus one more server of the same bento
with small engine limits and a LoRA adapter made here.

The bento serves the base model (`tiny-llama`) and the registered champion adapter (`LM_NAME`,
also `LM_NAME/1` and `LM_NAME@champion`). Greedy answers are compared with `model.generate` of
the same peft model (base + champion adapter), loaded in this process from the served files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.bento_modules import bento
from tests.integration.conftest import (
    API_KEY,
    LM_NAME,
    READY_TIMEOUT_S,
    Served,
    Server,
    _start,
    _stop,
    _wait_ready,
    isolated_env,
)

# The answers are compared with float32 `generate`: the LLM servers of this session pin
# float32 (auto may pick bfloat16 on a CPU with bf16 units; test_openai checks that one).
os.environ.setdefault("TUNESHIP_LLM_DTYPE", "float32")
pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPT = "ROMEO:\nBut soft, what light"
CHAT = [{"role": "system", "content": "You are a poet."},
        {"role": "user", "content": "Tell me of the sea."}]
ADAPTER = "poet"
BASE = "tiny-llama"  # the base model's registered name (model.name of smoke_lm)
SERVED = [BASE, LM_NAME, f"{LM_NAME}/1", f"{LM_NAME}@champion"]


@dataclass
class Weights:
    """The served model's files, loaded here for reference answers: `model` is the champion
    (base + adapter, a peft model), `folder` the base weights."""

    model: object
    tokenizer: object
    folder: Path
    repetition_penalty: float

    def generate(self, ids: list[int], max_tokens: int, model: object = None) -> dict:
        import torch

        x = torch.tensor([ids])
        with torch.inference_mode():
            out = (model or self.model).generate(
                input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                max_new_tokens=max_tokens, repetition_penalty=self.repetition_penalty,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        new = out[0, x.shape[1]:].tolist()
        return {"text": self.tokenizer.decode(new, skip_special_tokens=True), "tokens": len(new)}

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def chat_ids(self, messages: list[dict]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                 tokenize=True, return_dict=False)
        return list(ids["input_ids"] if hasattr(ids, "input_ids") else ids)


@pytest.fixture(scope="module")
def client(served_lm: Served) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{served_lm.open.url}/v1", api_key="unused",
                       max_retries=0, timeout=60) as api:
        yield api


@pytest.fixture(scope="module")
def weights(served_lm: Served, client: openai.OpenAI) -> Weights:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    card = httpx.get(f"{served_lm.open.url}/model", timeout=30).json()

    def stored(tag: str) -> tuple[Path, dict]:
        name, version = tag.split(":")
        root = served_lm.bentoml_home / "models" / name / version
        return root, yaml.safe_load((root / "model.yaml").read_text())["metadata"]

    base_root, base_meta = stored(card["base"]["bento_model"])
    root, meta = stored(card["bento_model"])
    assert "model" not in meta["transformers"]  # the registered version is the adapter alone
    folder = base_root / base_meta["transformers"]["model"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder),
                                      root / meta["transformers"]["adapter"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(root / meta["transformers"]["tokenizer"])
    return Weights(model, tokenizer, folder,
                   float(meta.get("generation", {}).get("repetition_penalty", 1.0)))


@pytest.fixture(scope="module")
def adapter_dir(weights: Weights, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter for the served base (random, non-zero: it changes the answers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(weights.folder)
    torch.manual_seed(11)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    folder = tmp_path_factory.mktemp("adapter") / ADAPTER
    peft.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def small(served_lm: Served, adapter_dir: Path) -> Iterator[Server]:
    """The same bento with 2 places, 2 waiting at most, the adapter, polling the registry.

    Its own BENTOML_HOME (the store linked in): every `bentoml serve` empties
    $BENTOML_HOME/prometheus_multiproc_dir at start, which would freeze the other servers'
    metrics.
    """
    home = served_lm.bentoml_home.parent / "bentoml_small"
    home.mkdir(exist_ok=True)
    for part in ("bentos", "models"):
        if not (home / part).exists():
            (home / part).symlink_to(served_lm.bentoml_home / part)
    env = {**isolated_env(served_lm.bentoml_home.parent), "BENTOML_HOME": str(home),
           "TUNESHIP_LLM_MAX_BATCH": "2", "TUNESHIP_LLM_MAX_QUEUE": "2",
           "TUNESHIP_LLM_REGISTRY_POLL_S": "1",
           "TUNESHIP_LLM_ADAPTERS": f"{ADAPTER}={adapter_dir}"}
    env.pop("MLFLOW_TRACKING_URI")  # it follows the registry the bento recorded (llm_registry_uri)
    server = _start(env, served_lm.bentoml_home.parent / "small.log", f"{LM_NAME}:latest")
    try:
        _wait_ready(server, time.monotonic() + READY_TIMEOUT_S)
        yield server
    finally:
        _stop(server)


def _small_client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                         timeout=60)


# --- models, completions, chat ------------------------------------------------------------------


def test_models_lists_the_base_and_the_registered_adapter(client):
    models = client.models.list().data
    assert [m.id for m in models] == SERVED
    assert models[0].object == "model"
    assert models[0].max_model_len == 256 and models[0].parent is None
    assert all(m.parent == BASE and m.root == f"{LM_NAME}/1" for m in models[1:])
    assert client.models.retrieve(LM_NAME).id == LM_NAME


def test_greedy_completion_equals_model_generate(client, weights):
    answer = client.completions.create(model=LM_NAME, prompt=PROMPT, max_tokens=12,
                                       temperature=0)
    want = weights.generate(weights.prompt_ids(PROMPT), 12)
    choice = answer.choices[0]
    assert choice.text == want["text"]
    assert answer.object == "text_completion" and answer.model == LM_NAME
    assert answer.id.startswith("cmpl-") and answer.created > 0
    assert answer.usage.prompt_tokens == len(weights.prompt_ids(PROMPT))
    assert answer.usage.completion_tokens == want["tokens"]
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + want["tokens"]
    assert choice.finish_reason == ("length" if want["tokens"] == 12 else "stop")


def test_greedy_chat_applies_the_chat_template(client, weights):
    answer = client.chat.completions.create(model=LM_NAME, messages=CHAT, max_tokens=10,
                                            temperature=0)
    ids = weights.chat_ids(CHAT)
    want = weights.generate(ids, 10)
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == want["text"]
    assert answer.usage.prompt_tokens == len(ids)
    # max_completion_tokens is the newer name of the same bound
    newer = client.chat.completions.create(model=LM_NAME, messages=CHAT,
                                           max_completion_tokens=10, temperature=0)
    assert newer.choices[0].message.content == want["text"]


def test_streamed_chunks_concatenate_to_the_whole_answer(client):
    whole = client.completions.create(model=LM_NAME, prompt=PROMPT, max_tokens=16,
                                      temperature=0)
    chunks = list(client.completions.create(model=LM_NAME, prompt=PROMPT, max_tokens=16,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == \
        whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage  # the usage chunk

    chat = client.chat.completions.create(model=LM_NAME, messages=CHAT, max_tokens=12,
                                          temperature=0)
    pieces = list(client.chat.completions.create(model=LM_NAME, messages=CHAT, max_tokens=12,
                                                 temperature=0, stream=True))
    assert pieces[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in pieces) == \
        chat.choices[0].message.content
    assert all(p.usage is None for p in pieces)  # no usage unless asked for


def test_stop_string_ends_the_text_before_it(client):
    full = client.completions.create(model=LM_NAME, prompt=PROMPT, max_tokens=24,
                                     temperature=0).choices[0].text
    middle = full.strip()[len(full.strip()) // 2:][:3]
    assert middle, full
    for stop in (middle, [middle, "@@@"]):
        answer = client.completions.create(model=LM_NAME, prompt=PROMPT, max_tokens=24,
                                           temperature=0, stop=stop)
        assert answer.choices[0].text == full[:full.find(middle)]
        assert answer.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=LM_NAME, prompt=PROMPT, max_tokens=24,
                                         temperature=0, stop=middle, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[:full.find(middle)]


def test_seeded_sampling_repeats_and_n_gives_several_choices(client):
    sampled = {"model": LM_NAME, "prompt": PROMPT, "max_tokens": 10, "temperature": 1.5,
               "top_p": 0.95, "seed": 7}
    first = client.completions.create(**sampled)
    assert client.completions.create(**sampled).choices[0].text == first.choices[0].text
    several = client.completions.create(**sampled, n=3)
    assert [c.index for c in several.choices] == [0, 1, 2]
    assert several.choices[0].text == first.choices[0].text  # choice i samples with seed + i
    assert len({c.text for c in several.choices}) > 1
    assert several.usage.prompt_tokens == first.usage.prompt_tokens  # the prompt counts once
    assert several.usage.completion_tokens == sum(
        client.completions.create(**{**sampled, "seed": 7 + i}).usage.completion_tokens
        for i in range(3))
    chats = client.chat.completions.create(model=LM_NAME, messages=CHAT, max_tokens=6,
                                           temperature=0, n=2)
    assert len(chats.choices) == 2
    assert chats.choices[0].message.content == chats.choices[1].message.content  # greedy


# --- errors -------------------------------------------------------------------------------------

BAD = [
    ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
    ({"top_p": 0}, "top_p", "greater than 0"),
    ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"max_tokens": 257}, "max_tokens", "at most 256"),
    ({"n": 5}, "n", "at most 4"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"seed": -1}, "seed", "greater than or equal to 0"),
    ({"logprobs": 2}, "logprobs", "not supported"),
    ({"extra_body": {"top_k": 5}}, "top_k", "Extra inputs are not permitted"),
    ({"prompt": "word " * 300, "max_tokens": 10}, "max_tokens", "exceeds the model's context"),
]


@pytest.mark.parametrize(("change", "param", "message"), BAD, ids=[b[1] for b in BAD])
def test_bad_parameters_raise_bad_request_with_the_reason(client, change, param, message):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(**{"model": LM_NAME, "prompt": PROMPT, **change})
    assert err.value.status_code == 400
    assert message in err.value.message
    assert err.value.body["param"] == param and err.value.body["type"] == "invalid_request_error"


def test_context_overflow_names_both_numbers(client, weights):
    prompt = "word " * 300
    n = len(weights.prompt_ids(prompt))
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=LM_NAME, prompt=prompt, max_tokens=10)
    assert f"{n} tokens" in err.value.message and "max_tokens is 10" in err.value.message
    assert "256" in err.value.message


def test_chat_bad_parameters(client):
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(model=LM_NAME, messages=CHAT, tools=[{
            "type": "function", "function": {"name": "f", "parameters": {}}}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=LM_NAME, messages=[])


def test_an_oversized_body_is_413_in_openai_shape(client):
    with pytest.raises(openai.APIStatusError) as err:
        client.completions.create(model=LM_NAME, prompt="a" * 1_100_000, max_tokens=2)
    assert err.value.status_code == 413
    assert "request body too large" in err.value.message
    assert err.value.body["type"] == "invalid_request_error"


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="gpt-4o", prompt=PROMPT, max_tokens=2)
    assert "gpt-4o" in err.value.message and err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=CHAT)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_missing_or_wrong_key_is_an_authentication_error(served_lm):
    url = f"{served_lm.keyed.url}/v1"
    for key in ("wrong-key", ""):
        with openai.OpenAI(base_url=url, api_key=key or "x", max_retries=0,
                           default_headers={} if key else {"Authorization": ""}) as api, \
                pytest.raises(openai.AuthenticationError) as err:
            api.completions.create(model=LM_NAME, prompt=PROMPT, max_tokens=2)
        assert "missing or invalid API key" in err.value.message
        assert err.value.body["type"] == "authentication_error"
    with openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0) as api:
        assert api.completions.create(model=LM_NAME, prompt=PROMPT, max_tokens=2).choices
        assert [m.id for m in api.models.list().data] == SERVED
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{served_lm.keyed.url}{probe}", timeout=30).status_code == 200


# --- load: cancel, concurrency, shedding --------------------------------------------------------


def _metric(url: str, name: str, **labels: str) -> float:
    """Sum of a series on /metrics whose labels include `labels`."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        found = re.match(rf"^{name}\{{([^}}]*)\}} (\S+)$", line)
        if found and all(f'{k}="{v}"' in found.group(1) for k, v in labels.items()):
            total += float(found.group(2))
    return total


def test_a_client_closing_a_stream_frees_its_slot(client, served_lm):
    url = served_lm.open.url
    before = _metric(url, "tuneship_llm_requests_total", finish_reason="cancelled")
    stream = client.completions.create(model=LM_NAME, prompt=PROMPT, max_tokens=200,
                                       temperature=0, stream=True)
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 30
    while (_metric(url, "tuneship_llm_requests_total", finish_reason="cancelled") == before
           and time.monotonic() < deadline):
        time.sleep(0.2)
    assert _metric(url, "tuneship_llm_requests_total", finish_reason="cancelled") == before + 1
    assert _metric(url, "tuneship_llm_num_requests_running") == 0
    assert client.completions.create(model=LM_NAME, prompt=PROMPT, max_tokens=3).choices


def test_sixteen_concurrent_streams_all_finish_in_shared_batches(served_lm, weights):
    async def run() -> list[tuple[str, str | None]]:
        async with openai.AsyncOpenAI(base_url=f"{served_lm.open.url}/v1", api_key="unused",
                                      max_retries=0, timeout=120) as api:
            async def one(i: int) -> tuple[str, str | None]:
                stream = await api.completions.create(
                    model=LM_NAME, prompt=f"{PROMPT} {i}", max_tokens=24, temperature=0,
                    stream=True)
                text, reason = "", None
                async for chunk in stream:
                    text += chunk.choices[0].text
                    reason = chunk.choices[0].finish_reason or reason
                return text, reason

            return await asyncio.gather(*(one(i) for i in range(16)))

    before = httpx.get(f"{served_lm.open.url}/model", timeout=30).json()["served"]["engine"]
    answers = asyncio.run(run())
    after = httpx.get(f"{served_lm.open.url}/model", timeout=30).json()["served"]["engine"]
    assert all(reason in ("stop", "length") for _, reason in answers)
    for i, (text, _) in enumerate(answers[:3]):  # batched greedy = alone
        assert text == weights.generate(weights.prompt_ids(f"{PROMPT} {i}"), 24)["text"]
    assert after["peak_batch"] > 1
    tokens = after["decoded_tokens"] - before["decoded_tokens"]
    steps = after["decode_steps"] - before["decode_steps"]
    assert tokens > steps  # rows shared forward passes


def test_a_full_queue_sheds_with_retry_after_on_both_apis(small):
    """2 running + 2 waiting: the rest get 429 (/v1) or 503 "busy" (/generate) at once."""
    body = {"model": LM_NAME, "prompt": PROMPT, "max_tokens": 200, "temperature": 0}

    def call(i: int) -> tuple[int, str, str | None]:
        if i % 2:
            answer = httpx.post(f"{small.url}/generate", timeout=120, json={
                "prompt": PROMPT, "max_new_tokens": 200})
            return answer.status_code, answer.text, answer.headers.get("retry-after")
        with _small_client(small) as api:
            try:
                api.completions.create(**body)
                return 200, "", None
            except openai.RateLimitError as err:
                return 429, err.message, err.response.headers.get("retry-after")

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(call, range(12)))
    statuses = Counter(status for status, _, _ in answers)
    assert set(statuses) <= {200, 429, 503}, answers
    assert statuses[200] >= 4, statuses  # everything admitted is answered
    assert statuses[429] + statuses[503] > 0, statuses
    for status, text, retry_after in answers:
        if status in (429, 503):
            assert "busy" in text and retry_after == "1", (status, text)
    with _small_client(small) as api:
        assert api.completions.create(model=LM_NAME, prompt=PROMPT, max_tokens=3).choices


# --- adapters -----------------------------------------------------------------------------------


def test_adapter_is_listed_with_its_parent_and_answers_like_peft(small, weights, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with _small_client(small) as api:
        models = {m.id: m for m in api.models.list().data}
        assert set(models) == {*SERVED, ADAPTER}
        assert models[ADAPTER].parent == BASE and models[BASE].parent is None
        base = AutoModelForCausalLM.from_pretrained(weights.folder)
        tuned = PeftModel.from_pretrained(base, adapter_dir).eval()
        # The reference runs the weight layout the server timed and chose (the same values,
        # another GEMM summation order, which can flip a near-tie of the random tiny model).
        card = httpx.get(f"{small.url}/model", timeout=30).json()["served"]["dtype"]
        bento("engine")._cpu_weight_layout(tuned, card["weight_layout"] == "transposed")
        ids = weights.prompt_ids(PROMPT)
        want = {LM_NAME: weights.generate(ids, 12)["text"],
                ADAPTER: weights.generate(ids, 12, model=tuned)["text"]}
        with tuned.disable_adapter():
            want[BASE] = weights.generate(ids, 12, model=tuned)["text"]
        assert len(set(want.values())) == 3  # each adapter matters
        # Alone, the engine merges the adapter into the base weights (as peft's merge_adapter):
        # the same sums in another order, which can flip a near-tie of the random tiny model.
        tuned.merge_adapter()
        merged = weights.generate(ids, 12, model=tuned)["text"]
        tuned.unmerge_adapter()

        def ask(model: str) -> str:
            return api.completions.create(model=model, prompt=PROMPT, max_tokens=12,
                                          temperature=0).choices[0].text

        order = [BASE, LM_NAME, ADAPTER]
        with ThreadPoolExecutor(3) as pool:  # the base and two adapters decoded together
            together = dict(zip(order, pool.map(ask, order), strict=True))
        assert together == want
        assert ask(ADAPTER) == merged


# --- metrics ------------------------------------------------------------------------------------


def test_metrics_are_named_like_vllms(client, served_lm):
    """Per-request series are labelled by the adapter version that answered; the load gauges
    (what the HPA scales on) by the base model the engine runs."""
    url, version = served_lm.open.url, f"{LM_NAME}/1"
    before = _metric(url, "tuneship_llm_generation_tokens_total", model_name=version)
    answer = client.completions.create(model=LM_NAME, prompt=PROMPT, max_tokens=5,
                                       temperature=0)
    after = _metric(url, "tuneship_llm_generation_tokens_total", model_name=version)
    assert after == before + answer.usage.completion_tokens
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for name, label in (("tuneship_llm_time_to_first_token_seconds_bucket", version),
                        ("tuneship_llm_inter_token_latency_seconds_bucket", version),
                        ("tuneship_llm_e2e_request_latency_seconds_bucket", version),
                        ("tuneship_llm_num_requests_running", BASE),
                        ("tuneship_llm_num_requests_waiting", BASE),
                        ("tuneship_llm_prompt_tokens_total", version),
                        ("tuneship_llm_generation_tokens_total", version)):
        assert re.search(rf'^{name}\{{[^}}]*model_name="{re.escape(label)}"', text,
                         re.MULTILINE), name

# --- the weights' precision ----------------------------------------------------------------------


def test_model_and_metrics_name_the_dtype_served(served_lm):
    card = httpx.get(f"{served_lm.open.url}/model", timeout=30).json()["served"]
    assert card["dtype"]["dtype"] == card["engine"]["dtype"] == "float32"
    assert card["dtype"]["chosen_by"] == "config"  # pinned above (TUNESHIP_LLM_DTYPE)
    text = httpx.get(f"{served_lm.open.url}/metrics", timeout=30).text
    assert re.search(r'^tuneship_llm_dtype_info\{[^}]*dtype="float32"[^}]*\} 1\.0$', text,
                     re.MULTILINE)


def test_bfloat16_serves_the_base_and_merged_adapters_and_restores_the_base(served_lm,
                                                                          adapter_dir):
    """The same bento pinned to bfloat16: reported so; the base, the champion and a local
    adapter answer (a batch of one adapter runs merged), and the base answers as before once
    the adapters are unmerged again (its bf16 weights restored exactly). Greedy tokens against
    `generate` in bf16 are tests/unit/test_engine.py's: the smoke model is random, its logits
    near-ties that bf16 rounding in another batch shape can flip."""
    with _pinned(served_lm, "bfloat16", adapter_dir) as server:
        card = httpx.get(f"{server.url}/model", timeout=30).json()["served"]
        assert (card["dtype"]["dtype"], card["engine"]["dtype"]) == ("bfloat16", "bfloat16")
        assert card["dtype"]["chosen_by"] == "config"
        with _small_client(server) as api:
            first = _ask(api, BASE)
            adapted = _ask(api, ADAPTER)
            assert adapted != first  # the adapter is applied
            assert _ask(api, LM_NAME)
            assert _ask(api, ADAPTER) == adapted  # merged again after the champion's merge
            assert _ask(api, BASE) == first
        after = httpx.get(f"{server.url}/model", timeout=30).json()["served"]["engine"]
        assert after["adapter_merges"] == 3  # ADAPTER, LM_NAME, ADAPTER: each merged in turn


def test_int8_weights_serve_the_base_and_unmerged_adapters(served_lm, adapter_dir):
    """The same bento pinned to int8 (weight-only): reported so in /model and /metrics; the
    base, the champion and a local adapter answer, every adapter unmerged (never merged into
    int8 weights), and each answers the same when asked again after the others."""
    with _pinned(served_lm, "int8", adapter_dir) as server:
        card = httpx.get(f"{server.url}/model", timeout=30).json()["served"]
        assert (card["dtype"]["dtype"], card["engine"]["dtype"]) == ("int8", "int8")
        assert card["dtype"]["chosen_by"] == "config"
        with _small_client(server) as api:
            first, adapted = _ask(api, BASE), _ask(api, ADAPTER)
            assert adapted != first  # the adapter is applied over the int8 base
            assert _ask(api, LM_NAME)
            assert (_ask(api, ADAPTER), _ask(api, BASE)) == (adapted, first)
        after = httpx.get(f"{server.url}/model", timeout=30).json()["served"]["engine"]
        assert after.get("adapter_merges", 0) == 0
        text = httpx.get(f"{server.url}/metrics", timeout=30).text
        assert re.search(r'^tuneship_llm_dtype_info\{[^}]*dtype="int8"[^}]*\} 1\.0$', text,
                         re.MULTILINE)


@contextlib.contextmanager
def _pinned(served_lm: Served, dtype: str, adapter_dir: Path) -> Iterator[Server]:
    """The bento served with `llm_dtype` pinned and the local adapter, in its own home."""
    home = served_lm.bentoml_home.parent / f"bentoml_{dtype}"
    home.mkdir(exist_ok=True)
    for part in ("bentos", "models"):
        if not (home / part).exists():
            (home / part).symlink_to(served_lm.bentoml_home / part)
    env = {**isolated_env(served_lm.bentoml_home.parent), "BENTOML_HOME": str(home),
           "TUNESHIP_LLM_DTYPE": dtype, "TUNESHIP_LLM_ADAPTERS": f"{ADAPTER}={adapter_dir}"}
    server = _start(env, served_lm.bentoml_home.parent / f"{dtype}.log", f"{LM_NAME}:latest")
    try:
        _wait_ready(server, time.monotonic() + READY_TIMEOUT_S)
        yield server
    finally:
        _stop(server)


def _ask(api: openai.OpenAI, model: str) -> str:
    choice = api.completions.create(model=model, prompt=PROMPT, max_tokens=8,
                                    temperature=0).choices[0]
    assert choice.finish_reason in ("stop", "length"), model
    return choice.text


# --- following the registry (last: it registers a new version in the shared store) ----------


def test_an_adapter_registered_while_serving_becomes_servable(small, served_lm, weights):
    """`small` polls the registry every second: a new version, registered by the register
    stage while it serves, is listed and answers under `name/2` and `name@challenger`."""
    from tests.integration.conftest import _run

    env = isolated_env(served_lm.bentoml_home.parent)
    _run("register.py", ["experiment=smoke_lm"], env, timeout=240)  # v2, @challenger
    new = {f"{LM_NAME}/2", f"{LM_NAME}@challenger"}
    with _small_client(small) as api:
        deadline = time.monotonic() + 60
        while not new <= {m.id for m in api.models.list().data}:
            assert time.monotonic() < deadline, "v2 never became servable"
            time.sleep(1)
        assert api.models.retrieve(f"{LM_NAME}@challenger").root == f"{LM_NAME}/2"
        assert api.models.retrieve(LM_NAME).root == f"{LM_NAME}/1"  # the champion did not move
        want = weights.generate(weights.prompt_ids(PROMPT), 8)["text"]  # the same adapter
        for model in new:
            assert api.completions.create(model=model, prompt=PROMPT, max_tokens=8,
                                          temperature=0).choices[0].text == want
