"""The continuous-batching engine (bentos/engine.py) on a tiny random Llama built here.

Greedy output of requests decoded together must equal `model.generate` run one at a time; a
request may join a running batch; LoRA adapters mix in one batch; cancelling frees the slot;
the KV budget and the queue bound admission.
"""

from __future__ import annotations

import asyncio
import copy
import time

import pytest
import torch

from tests.bento_modules import bento

pytestmark = pytest.mark.unit

engine_mod = bento("engine")  # bentos/engine.py as the image imports it (without tuneship)
int8_weights = bento("int8_weights")
Engine, Request, SamplingParams = engine_mod.Engine, engine_mod.Request, engine_mod.SamplingParams

TEXT = """First Citizen: Before we proceed any further, hear me speak.
All: Speak, speak. First Citizen: You are all resolved rather to die than to famish?
All: Resolved. resolved. First Citizen: First, you know Caius Marcius is chief enemy to the people.
All: We know't, we know't. First Citizen: Let us kill him, and we'll have corn at our own price.
Second Citizen: One word, good citizens. First Citizen: We are accounted poor citizens.
MENENIUS: What work's, my countrymen, in hand? where go you with bats and clubs?"""
PROMPTS = ["First Citizen:", "All: Speak", "MENENIUS: What work's, my countrymen", "We",
           "Second Citizen: One word, good citizens. First"]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT.splitlines(), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def tiny_llama(tokenizer, seed: int = 0, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                         intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         initializer_range=0.3, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(tokenizer)


def ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt)["input_ids"]


def reference(model, tokenizer, prompt: str, max_tokens: int, **kwargs) -> str:
    """`model.generate` alone on one prompt, greedy."""
    x = torch.tensor([ids(tokenizer, prompt)])
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                             max_new_tokens=max_tokens, pad_token_id=tokenizer.pad_token_id,
                             **kwargs)
    return tokenizer.decode(out[0, x.shape[1]:], skip_special_tokens=True)


def greedy(tokenizer, prompt: str, max_tokens: int, **kwargs):
    return Request(ids(tokenizer, prompt), SamplingParams(max_tokens=max_tokens, **kwargs))


async def collect_all(engine, requests):
    streams = [engine.submit(r) for r in requests]
    return await asyncio.gather(*(s.collect() for s in streams))


def test_batched_greedy_equals_generate_one_at_a_time(model, tokenizer):
    with Engine(model, tokenizer, max_batch=8) as engine:
        results = asyncio.run(collect_all(engine, [greedy(tokenizer, p, 24) for p in PROMPTS]))
        assert engine.stats()["peak_batch"] == len(PROMPTS)  # decoded together
    for prompt, result in zip(PROMPTS, results, strict=True):
        assert result.text == reference(model, tokenizer, prompt, 24), prompt
        assert result.prompt_tokens == len(ids(tokenizer, prompt))
        assert 1 <= result.completion_tokens <= 24
        assert result.finish_reason == ("length" if result.completion_tokens == 24 else "stop")


def test_a_request_joins_a_running_batch(model, tokenizer):
    long_prompt, late_prompt = PROMPTS[0], PROMPTS[2]

    async def scenario(engine):
        first = engine.submit(greedy(tokenizer, long_prompt, 120, ignore_eos=True))
        seen = []
        async for delta in first:
            seen.append(delta)
            if len([t for d in seen for t in d.token_ids]) >= 10:
                break
        late = engine.submit(greedy(tokenizer, late_prompt, 20))
        late_result = await late.collect()
        rest = [d async for d in first]
        return engine_mod._collect(seen + rest), late_result

    with Engine(model, tokenizer) as engine:
        first, late = asyncio.run(scenario(engine))
        stats = engine.stats()
    assert first.completion_tokens == 120 and first.finish_reason == "length"
    assert first.text == reference(model, tokenizer, long_prompt, 120, min_new_tokens=120)
    assert late.text == reference(model, tokenizer, late_prompt, 20)
    assert stats["peak_batch"] == 2
    assert stats["decode_steps"] < 120 + late.completion_tokens  # steps were shared


def test_streamed_deltas_hold_back_a_stop_string_and_cut_before_it(model, tokenizer):
    full = reference(model, tokenizer, PROMPTS[1], 30)
    stop = full[len(full) // 2:][:3]
    assert len(stop) == 3 and stop.strip(), full

    async def run(engine):
        stream = engine.submit(greedy(tokenizer, PROMPTS[1], 30, stop=(stop, "@@never@@")))
        return [d async for d in stream]

    with Engine(model, tokenizer) as engine:
        deltas = asyncio.run(run(engine))
    text = "".join(d.text for d in deltas)
    assert text == full[:full.find(stop)]
    assert deltas[-1].finish_reason == "stop"
    assert all(stop not in d.text for d in deltas)


def test_seeded_sampling_repeats_and_differs_by_seed(model, tokenizer):
    def sample(seed):
        return Request(ids(tokenizer, PROMPTS[0]), SamplingParams(
            max_tokens=20, temperature=1.5, top_p=0.95, seed=seed, ignore_eos=True))

    with Engine(model, tokenizer) as engine:
        a, b, c = asyncio.run(collect_all(engine, [sample(1), sample(1), sample(2)]))
        alone = engine.generate(sample(1), timeout=60)
    assert a.text == b.text == alone.text  # batched or alone, the seed decides
    assert a.text != c.text


def test_mixed_adapters_in_one_batch_equal_each_alone(model, tokenizer, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    folders = {}
    for n, name in enumerate(["poet", "clerk"]):
        base = tiny_llama(tokenizer)
        torch.manual_seed(100 + n)  # after building the base: its own seed is fixed
        peft = get_peft_model(base, LoraConfig(
            r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
            init_lora_weights=False))
        peft.save_pretrained(tmp_path / name)
        folders[name] = str(tmp_path / name)

    def alone(adapter, prompt):
        if adapter is None:
            return reference(model, tokenizer, prompt, 16)
        peft = PeftModel.from_pretrained(tiny_llama(tokenizer), folders[adapter]).eval()
        return reference(peft, tokenizer, prompt, 16)

    cases = [("poet", PROMPTS[0]), ("clerk", PROMPTS[0]), (None, PROMPTS[0]),
             ("poet", PROMPTS[2]), ("clerk", PROMPTS[3])]
    expected = [alone(a, p) for a, p in cases]
    assert len({expected[0], expected[1], expected[2]}) == 3  # the adapters change the text
    for mode in ("mixed", "grouped"):
        with Engine(tiny_llama(tokenizer), tokenizer, adapters=folders,
                    adapter_mode=mode) as engine:
            requests = [Request(ids(tokenizer, p), SamplingParams(max_tokens=16), adapter=a)
                        for a, p in cases]
            results = asyncio.run(collect_all(engine, requests))
            assert engine.stats()["peak_batch"] == (len(cases) if mode == "mixed" else 2)
            assert [r.text for r in results] == expected, mode
            # each alone through the engine (the single-adapter path, no per-row hooks)
            for (adapter, prompt), want in zip(cases, expected, strict=True):
                single = Request(ids(tokenizer, prompt), SamplingParams(max_tokens=16),
                                 adapter=adapter)
                assert engine.generate(single, timeout=60).text == want


def test_add_adapter_at_run_time_and_unknown_adapter(model, tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(tokenizer)
    torch.manual_seed(7)
    peft = get_peft_model(base, LoraConfig(
        r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "late")
    with Engine(tiny_llama(tokenizer), tokenizer) as engine:
        base = engine.generate(greedy(tokenizer, PROMPTS[0], 8), timeout=60)
        with pytest.raises(engine_mod.UnknownAdapter, match="late"):
            engine.generate(Request(ids(tokenizer, PROMPTS[0]), adapter="late"))
        engine.add_adapter("late", str(tmp_path / "late"))
        assert engine.stats()["adapters"] == ["late"]
        again = engine.generate(greedy(tokenizer, PROMPTS[0], 8), timeout=60)
        tuned = engine.generate(Request(ids(tokenizer, PROMPTS[0]),
                                        SamplingParams(max_tokens=8), adapter="late"), timeout=60)
    assert again.text == base.text  # the base model is unchanged by loading an adapter
    assert tuned.completion_tokens >= 1


def test_cancel_frees_the_slot_at_the_next_step(model, tokenizer):
    async def scenario(engine):
        stream = engine.submit(greedy(tokenizer, PROMPTS[0], 200, ignore_eos=True))
        first = await stream.__anext__()
        stream.cancel()
        deadline = time.monotonic() + 10
        while engine.stats()["running"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return first, engine.stats()

    with Engine(model, tokenizer, max_batch=1) as engine:
        first, stats = asyncio.run(scenario(engine))
        assert stats["running"] == 0 and stats["finished_cancelled"] == 1
        assert first.token_ids and stats.get("finished_length", 0) == 0
        # the only place is free again
        assert engine.generate(greedy(tokenizer, PROMPTS[1], 3), timeout=30).completion_tokens


def test_kv_budget_makes_requests_wait_and_the_queue_is_bounded(model, tokenizer):
    prompt = ids(tokenizer, PROMPTS[0])
    reserved = len(prompt) + 40
    started: dict[str, float] = {}
    finished: dict[str, float] = {}

    async def scenario(engine):
        def submit(name):
            return engine.submit(Request(prompt, SamplingParams(max_tokens=40, ignore_eos=True),
                                         request_id=name))

        streams = [submit("a")]
        while not engine.stats()["running"]:
            await asyncio.sleep(0.001)
        streams.append(submit("b"))
        waiting = engine.stats()["waiting"]
        with pytest.raises(engine_mod.EngineFull, match="busy"):
            engine.submit(Request(prompt, SamplingParams(max_tokens=40)))

        async def read(stream):
            async for delta in stream:
                started.setdefault(stream.request_id, time.perf_counter())
                if delta.finish_reason:
                    finished[stream.request_id] = time.perf_counter()

        await asyncio.gather(*(read(s) for s in streams))
        return waiting

    # room for one row of `reserved` tokens, not two; one more may wait, a third is refused
    with Engine(model, tokenizer, kv_budget_tokens=reserved * 2 - 1, max_queue=1) as engine:
        waiting = asyncio.run(scenario(engine))
        stats = engine.stats()
    assert waiting == 1
    assert stats["peak_batch"] == 1
    assert started["b"] >= finished["a"]  # b waited for a's place
    with Engine(model, tokenizer, kv_budget_tokens=reserved - 1) as engine, \
            pytest.raises(engine_mod.InvalidRequest, match="KV-cache"):
        engine.generate(Request(prompt, SamplingParams(max_tokens=40)))


def test_context_overflow_names_both_numbers(model, tokenizer):
    with Engine(model, tokenizer) as engine, pytest.raises(engine_mod.InvalidRequest) as err:
        engine.generate(Request(list(range(1, 201)), SamplingParams(max_tokens=100)))
    message = str(err.value)
    assert "200" in message and "100" in message and "256" in message


def test_a_failed_forward_fails_its_requests_and_the_engine_keeps_serving(model, tokenizer):
    with Engine(model, tokenizer) as engine:
        forward = engine._forward

        def broken(*args, **kwargs):
            engine._forward = forward  # only once
            raise RuntimeError("out of memory (simulated)")

        engine._forward = broken
        failed = engine.generate(greedy(tokenizer, PROMPTS[0], 8), timeout=30)
        assert failed.finish_reason == "error" and "simulated" in failed.error
        assert engine.generate(greedy(tokenizer, PROMPTS[0], 8), timeout=30).finish_reason in (
            "stop", "length")
        assert engine.stats()["running"] == 0


def test_cancelling_a_waiting_request_drops_it_before_it_runs(model, tokenizer):
    async def scenario(engine):
        running = engine.submit(greedy(tokenizer, PROMPTS[0], 60, ignore_eos=True))
        while not engine.stats()["running"]:
            await asyncio.sleep(0.001)
        queued = engine.submit(greedy(tokenizer, PROMPTS[1], 60))
        assert engine.stats()["waiting"] == 1
        queued.cancel()
        assert engine.stats()["waiting"] == 0
        return await running.collect()

    with Engine(model, tokenizer, max_batch=1) as engine:
        result = asyncio.run(scenario(engine))
        assert result.completion_tokens == 60
        assert engine.stats()["finished_cancelled"] == 1


def lora_folders(tokenizer, tmp_path, names=("poet", "clerk"), hidden: int = 32,
                 targets=None):
    """Random (non-zero) LoRA adapters saved as peft folders; `targets` maps a name to its
    target modules (default: q_proj, v_proj, down_proj)."""
    from peft import LoraConfig, get_peft_model

    folders = {}
    for n, name in enumerate(names):
        base = tiny_llama(tokenizer, hidden=hidden)
        torch.manual_seed(100 + n)
        peft = get_peft_model(base, LoraConfig(
            r=4, lora_alpha=16, init_lora_weights=False,
            target_modules=(targets or {}).get(name, ["q_proj", "v_proj", "down_proj"])))
        peft.save_pretrained(tmp_path / name)
        folders[name] = str(tmp_path / name)
    return folders


def test_single_adapter_batches_run_merged_and_switching_stays_exact(tokenizer, tmp_path):
    """A batch of one adapter runs merged into the base weights; batches that change the
    adapter set (another adapter, the base, a mix) unmerge first, and every text equals the
    unmerged peft model's (or the base model's) own `generate`."""
    from peft import PeftModel

    folders = lora_folders(tokenizer, tmp_path)

    def want(adapter, prompt, n=12):
        if adapter is None:
            return reference(tiny_llama(tokenizer), tokenizer, prompt, n)
        peft = PeftModel.from_pretrained(tiny_llama(tokenizer), folders[adapter]).eval()
        return reference(peft, tokenizer, prompt, n)

    def ask(adapter, prompt, n=12):
        return Request(ids(tokenizer, prompt), SamplingParams(max_tokens=n), adapter=adapter)

    order = ["poet", "clerk", None, "poet", "poet", None, "clerk"]
    with Engine(tiny_llama(tokenizer), tokenizer, adapters=folders) as engine:
        for adapter in order:  # one batch at a time: each switches the merged adapter
            assert engine.generate(ask(adapter, PROMPTS[0]), timeout=60).text == \
                want(adapter, PROMPTS[0]), adapter
        assert engine.stats()["adapter_merges"] == 4  # poet, clerk, poet (after base), clerk
        assert engine.stats()["merged_adapter"] == "clerk"
        # a mixed batch unmerges and runs per-row adapters; then a single one merges again
        mixed = [("poet", PROMPTS[1]), ("clerk", PROMPTS[2]), (None, PROMPTS[3])]
        results = asyncio.run(collect_all(engine, [ask(a, p) for a, p in mixed]))
        assert [r.text for r in results] == [want(a, p) for a, p in mixed]
        assert engine.generate(ask("poet", PROMPTS[4]), timeout=60).text == \
            want("poet", PROMPTS[4])
        assert engine.stats()["merged_adapter"] == "poet"
    with Engine(tiny_llama(tokenizer), tokenizer, adapters=folders,
                merge_adapters=False) as engine:
        assert engine.generate(ask("poet", PROMPTS[0]), timeout=60).text == \
            want("poet", PROMPTS[0])
        assert engine.stats().get("adapter_merges", 0) == 0


def test_adapters_on_different_layers_do_not_leak_into_each_other(tokenizer, tmp_path):
    """Two adapters targeting different layers: each one's answer, merged alone or unmerged
    beside the other, equals peft's with that adapter loaded alone (a merged adapter leaves
    the other layers to peft's active adapter, which must then be that same adapter)."""
    from peft import PeftModel

    folders = lora_folders(tokenizer, tmp_path, targets={
        "poet": ["q_proj", "v_proj"], "clerk": ["o_proj", "up_proj", "down_proj"]})

    def want(adapter, prompt, n=12):
        peft = PeftModel.from_pretrained(tiny_llama(tokenizer), folders[adapter]).eval()
        return reference(peft, tokenizer, prompt, n)

    def ask(adapter, prompt, n=12):
        return Request(ids(tokenizer, prompt), SamplingParams(max_tokens=n), adapter=adapter)

    for merge in (True, False):
        with Engine(tiny_llama(tokenizer), tokenizer, adapters=folders,
                    merge_adapters=merge) as engine:
            for adapter in ["clerk", "poet", "clerk", "poet"]:
                assert engine.generate(ask(adapter, PROMPTS[0]), timeout=60).text == \
                    want(adapter, PROMPTS[0]), (adapter, merge)
            together = [("poet", PROMPTS[1]), ("clerk", PROMPTS[2])]
            results = asyncio.run(collect_all(engine, [ask(a, p) for a, p in together]))
            assert [r.text for r in results] == [want(a, p) for a, p in together]
            assert engine.generate(ask("clerk", PROMPTS[3]), timeout=60).text == \
                want("clerk", PROMPTS[3])


def test_base_weights_survive_many_merge_cycles(tokenizer, tmp_path):
    """Merging and unmerging restores the base weights bit for bit."""
    folders = lora_folders(tokenizer, tmp_path, names=("poet",))
    model = tiny_llama(tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with Engine(model, tokenizer, adapters=folders) as engine:
        for _ in range(20):
            engine.generate(Request(ids(tokenizer, PROMPTS[0]), SamplingParams(max_tokens=2),
                                    adapter="poet"), timeout=60)
            engine.generate(greedy(tokenizer, PROMPTS[0], 2), timeout=60)
        assert engine.stats()["adapter_merges"] == 20
        after = {k.replace(".base_layer", ""): v
                 for k, v in engine.model.get_base_model().state_dict().items()}
        base_text = engine.generate(greedy(tokenizer, PROMPTS[2], 24), timeout=60).text
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=0)
    assert base_text == reference(tiny_llama(tokenizer), tokenizer, PROMPTS[2], 24)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_undo_restores_the_round_trip_from_a_small_record(tokenizer, tmp_path, dtype):
    """peft's merge + unmerge leaves rounding in some elements; the undo record puts exactly
    those back, and keeps far less than a copy of the weights it covers."""
    from peft import PeftModel

    merge_undo = bento("merge_undo")
    folders = lora_folders(tokenizer, tmp_path, names=("poet",), hidden=64)
    model = PeftModel.from_pretrained(tiny_llama(tokenizer, hidden=64).to(dtype),
                                      folders["poet"], adapter_name="poet").to(dtype)
    for name, param in model.named_parameters():  # a trained adapter's small delta (the random
        if "lora_B" in name:                       # one moves a quarter of the elements)
            param.data.mul_(0.01)
    before = {k: v.clone() for k, v in model.get_base_model().state_dict().items()}
    undo = merge_undo.record(model, "poet")
    model.base_model.merge_adapter(adapter_names=["poet"])
    model.base_model.unmerge_adapter()
    after = model.get_base_model().state_dict()
    drifted = sum(int((after[k] != v).sum()) for k, v in before.items())
    assert drifted == undo.changed > 0  # the round trip is not exact, as the record predicted
    undo.restore()
    for name, value in model.get_base_model().state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    covered = undo.elements * before["model.layers.0.self_attn.q_proj.base_layer.weight"
                                     ].element_size()
    assert undo.nbytes < covered / 4, (undo.nbytes, covered)


def test_cpu_weight_layout_keeps_values_and_greedy_text(tokenizer):
    """Linear weights stored transposed (CPU, float32): same values, same greedy text."""
    model = tiny_llama(tokenizer, hidden=64)
    plain = tiny_llama(tokenizer, hidden=64)
    with Engine(model, tokenizer, max_batch=8) as engine:
        assert engine.stats()["weights_transposed"] > 0
        q = engine.model.model.layers[0].self_attn.q_proj.weight
        assert q.stride() == (1, q.shape[0])  # column-major now
        torch.testing.assert_close(q, plain.model.layers[0].self_attn.q_proj.weight,
                                   rtol=0, atol=0)
        results = asyncio.run(collect_all(engine, [greedy(tokenizer, p, 20) for p in PROMPTS]))
    assert [r.text for r in results] == [reference(plain, tokenizer, p, 20) for p in PROMPTS]
    with Engine(tiny_llama(tokenizer, hidden=64), tokenizer,
                cpu_weight_layout=False) as engine:
        assert engine.stats().get("weights_transposed", 0) == 0


def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode(model, tokenizer):
    long_prompt = " ".join([PROMPTS[4]] * 3)
    assert len(ids(tokenizer, long_prompt)) > 24

    async def scenario(engine):
        first = engine.submit(greedy(tokenizer, PROMPTS[0], 60, ignore_eos=True))
        await first.__anext__()
        steps_before = engine.stats()["decode_steps"]
        late = engine.submit(greedy(tokenizer, long_prompt, 16))
        late_result = await late.collect()
        rest = [d async for d in first]
        return steps_before, late_result, rest

    with Engine(model, tokenizer, max_prefill_tokens=8) as engine:
        steps_before, late, _ = asyncio.run(scenario(engine))
        stats = engine.stats()
    chunks = -(-len(ids(tokenizer, long_prompt)) // 8)
    assert stats["prefill_passes"] >= 1 + chunks
    assert stats["decode_steps"] > steps_before + late.completion_tokens  # decoded meanwhile
    assert late.text == reference(model, tokenizer, long_prompt, 16)


def test_rows_leaving_and_joining_at_different_times_stay_exact(model, tokenizer):
    """Rows of different lengths join one by one and leave at different steps (the KV slab
    moves the last row into a leaver's place and re-allocates when full)."""
    cases = [(p, n) for p, n in zip(PROMPTS * 2, [5, 30, 12, 40, 3, 22, 8, 17, 35, 9],
                                    strict=True)]

    async def scenario(engine):
        streams = []
        for prompt, n in cases:
            streams.append(engine.submit(greedy(tokenizer, prompt, n, ignore_eos=True)))
            await asyncio.sleep(0.01)
        return await asyncio.gather(*(s.collect() for s in streams))

    with Engine(model, tokenizer, max_batch=6) as engine:
        results = asyncio.run(scenario(engine))
        stats = engine.stats()
    assert stats["peak_batch"] > 2
    for (prompt, n), result in zip(cases, results, strict=True):
        assert result.completion_tokens == n
        assert result.text == reference(model, tokenizer, prompt, n, min_new_tokens=n), prompt


# --- bfloat16 weights and the dtype choice ------------------------------------------------------

def token_ids(results) -> list[list[int]]:
    return [r.token_ids for r in results]


FIRST = 6
# Logit gap under which bf16 may pick another token than fp32: its weights keep 8 mantissa bits
# (relative rounding 2**-9), which moves the tiny model's logits (std ~1.7) by hundredths.
NEAR_TIE = 0.05


def float32_greedy(model, tokenizer, prompt: str, n: int) -> tuple[list[int], list[torch.Tensor]]:
    """fp32 `generate`: the greedy tokens and the logits each was chosen from."""
    x = torch.tensor([ids(tokenizer, prompt)])
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                             max_new_tokens=n, min_new_tokens=n, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    return out.sequences[0, x.shape[1]:].tolist(), [s[0] for s in out.scores]


def test_bfloat16_engine_greedy_follows_float32_up_to_a_near_tie(tokenizer):
    """bf16 weights give fp32's greedy tokens; where they part, fp32 itself scored the two
    tokens within NEAR_TIE (a rounding-level tie). The engine reports the dtype."""
    requests = [greedy(tokenizer, p, FIRST, ignore_eos=True) for p in PROMPTS]
    with Engine(tiny_llama(tokenizer), tokenizer, max_batch=8, dtype=torch.bfloat16) as engine:
        stats = engine.stats()
        got = token_ids(asyncio.run(collect_all(engine, requests)))
        assert next(engine.model.parameters()).dtype == torch.bfloat16
    assert stats["dtype"] == "bfloat16"
    assert stats.get("weights_transposed", 0) == 0  # the fp32-only layout is not applied
    identical = 0
    for prompt, tokens in zip(PROMPTS, got, strict=True):
        want, scores = float32_greedy(tiny_llama(tokenizer), tokenizer, prompt, FIRST)
        parted = next((i for i, (a, b) in enumerate(zip(tokens, want, strict=True)) if a != b),
                      None)
        if parted is None:
            identical += 1
            continue
        logits = scores[parted]
        assert float(logits[want[parted]] - logits[tokens[parted]]) < NEAR_TIE, (prompt, parted)
    assert identical >= len(PROMPTS) - 1


def test_bfloat16_adapter_runs_merged_and_the_base_weights_come_back_bit_exact(tokenizer,
                                                                            tmp_path):
    """In bf16 a merged adapter gives the unmerged adapter's first tokens, and switching between
    adapter and base many times leaves every base weight exactly as loaded (restored, not
    subtracted: bf16 rounding would otherwise remain)."""
    from peft import PeftModel

    folders = lora_folders(tokenizer, tmp_path)
    model = tiny_llama(tokenizer).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    peft = PeftModel.from_pretrained(tiny_llama(tokenizer), folders["poet"]).eval()
    with Engine(peft, tokenizer, dtype=torch.bfloat16, merge_adapters=False) as engine:
        unmerged = engine.generate(Request(ids(tokenizer, PROMPTS[0]),
                                           SamplingParams(max_tokens=FIRST)), timeout=60)
    with Engine(model, tokenizer, adapters=folders, dtype=torch.bfloat16) as engine:
        for _ in range(10):
            for adapter in ("poet", "clerk", None):
                result = engine.generate(Request(ids(tokenizer, PROMPTS[0]),
                                                 SamplingParams(max_tokens=FIRST), adapter),
                                         timeout=60)
                if adapter == "poet":
                    assert result.token_ids == unmerged.token_ids
        assert engine.stats()["adapter_merges"] == 20
        after = {k.replace(".base_layer", ""): v
                 for k, v in engine.model.get_base_model().state_dict().items()}
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=0)


def test_choose_dtype_pinned_manifest_and_timing(tokenizer, tmp_path):
    choose, Choice = engine_mod.choose_dtype, engine_mod.DtypeChoice
    model, choice = choose(tiny_llama(tokenizer), "bfloat16", "cpu")
    assert (next(model.parameters()).dtype, choice.chosen_by) == (torch.bfloat16, "config")
    # a pinned dtype is honoured even when its parity failed, and says so
    _, choice = choose(tiny_llama(tokenizer), "bfloat16", "cpu", {"bfloat16": False})
    assert choice.dtype == "bfloat16" and "did not pass" in choice.reason
    # auto never picks a dtype the manifest failed (or does not list)
    for verdicts in ({"float32": True, "bfloat16": False}, {"float32": True}):
        model, choice = choose(tiny_llama(tokenizer), "auto", "cpu", verdicts)
        assert (choice.dtype, choice.chosen_by) == ("float32", "manifest")
        assert next(model.parameters()).dtype == torch.float32
    _, choice = choose(tiny_llama(tokenizer), "auto", "cuda", None)
    assert (choice.dtype, choice.chosen_by) == ("bfloat16", "device")
    model, choice = choose(tiny_llama(tokenizer), "auto", "cpu", {"bfloat16": True})
    assert isinstance(choice, Choice) and choice.chosen_by == "timing"
    assert set(choice.timings_ms) == {"float32", "bfloat16"}
    assert set(choice.timings_ms["float32"]) == {"rows_1", "rows_16"}
    faster = engine_mod.faster_everywhere(engine_mod.speedups(choice.timings_ms, "bfloat16"))
    assert choice.dtype == ("bfloat16" if faster else "float32")
    assert str(next(model.parameters()).dtype) == f"torch.{choice.dtype}"
    with pytest.raises(ValueError, match="llm_dtype must be auto or one of float32, bfloat16"):
        choose(tiny_llama(tokenizer), "float16", "cpu")


def test_bfloat16_must_not_be_slower_at_any_batch_size():
    faster = engine_mod.faster_everywhere
    assert faster({"rows_1": 1.05, "rows_16": 1.8})
    assert not faster({"rows_1": 0.81, "rows_16": 1.83})  # a lone client would pay for it
    assert not faster({"rows_1": 1.02, "rows_16": 1.1})   # geometric mean below MIN_GAIN


def test_manifest_verdicts_read_the_first_folder_with_a_manifest(tmp_path):
    import json

    adapter, base, bare = tmp_path / "adapter", tmp_path / "base", tmp_path / "bare"
    for folder in (adapter, base, bare):
        folder.mkdir()
    (base / "runtimes").mkdir()
    (base / "runtimes" / "manifest.json").write_text(json.dumps({"runtimes": [
        {"name": "torch-bf16", "kind": "torch", "dtype": "bfloat16", "passed": True,
         "parity": {"perplexity_ratio": 1.004}},
        {"name": "onnx-int8", "kind": "onnx", "dtype": "int8", "passed": True}]}))
    assert engine_mod.manifest_verdicts([bare]) is None
    assert engine_mod.manifest_verdicts([adapter, base]) == {"bfloat16": True}


def test_the_float32_weight_layout_is_timed_and_left_as_chosen(tokenizer):
    """choose_layout times both layouts, leaves the weights in the faster one, same values."""
    model, plain = tiny_llama(tokenizer, hidden=64), tiny_llama(tokenizer, hidden=64)
    layout, timings = engine_mod.choose_layout(model, rounds=1)
    assert set(timings) == {"natural", "transposed"}
    assert set(timings["natural"]) == {"rows_1", "rows_16"}
    gain = (timings["natural"]["rows_1"] * timings["natural"]["rows_16"]
            / timings["transposed"]["rows_1"] / timings["transposed"]["rows_16"]) ** 0.5
    assert layout == ("transposed" if gain > 1.0 else "natural")
    q = model.model.layers[0].self_attn.q_proj.weight
    assert (q.stride() == (1, q.shape[0])) == (layout == "transposed")
    torch.testing.assert_close(q, plain.model.layers[0].self_attn.q_proj.weight, rtol=0, atol=0)
    # back and forth in place keeps every value
    for transposed in (True, False):
        engine_mod._cpu_weight_layout(model, transposed)
        assert q.stride() == ((1, q.shape[0]) if transposed else (q.shape[1], 1))
        torch.testing.assert_close(q, plain.model.layers[0].self_attn.q_proj.weight,
                                   rtol=0, atol=0)
    _, choice = engine_mod.choose_dtype(tiny_llama(tokenizer), "float32", "cpu")
    assert choice.weight_layout in ("natural", "transposed")
    assert choice.card()["weight_layout"] == choice.weight_layout


def test_int8_weights_are_per_channel_within_half_a_step_and_leave_the_rest(tokenizer):
    """Every linear layer of the base (the tied head included) holds int8 weights whose
    dequantized values are within half a quantization step (plus the rounding of the scale)
    of the float32 ones; the input embedding is untouched."""
    model, plain = tiny_llama(tokenizer, hidden=64), tiny_llama(tokenizer, hidden=64)
    assert int8_weights.quantize_int8(model) == 2 * 7 + 1  # q k v o gate up down, the head
    assert int8_weights.is_int8(model) and not int8_weights.is_int8(plain)
    originals = dict(plain.named_modules())
    for name, module in model.named_modules():
        if not isinstance(module, int8_weights.Int8Linear):
            continue
        weight = originals[name].weight.detach()
        exact = weight.abs().amax(dim=1) / 127
        bound = 0.5 * exact + 127 * (module.scales.float() - exact).abs() + 1e-7
        assert module.weight.dtype == torch.int8
        assert bool(((module.dequantized() - weight).abs() <= bound[:, None]).all()), name
    torch.testing.assert_close(model.model.embed_tokens.weight, plain.model.embed_tokens.weight,
                               rtol=0, atol=0)
    x = torch.tensor([ids(tokenizer, PROMPTS[4])])
    with torch.inference_mode():
        got, want = model(x).logits, plain(x).logits
    relative = float(torch.linalg.norm(got - want) / torch.linalg.norm(want))
    assert relative < 0.05, relative  # 8-bit steps of a random 64-wide model: a few %


def test_int8_engine_runs_adapters_unmerged_like_peft_over_the_same_weights(tokenizer,
                                                                          tmp_path):
    """An int8 base serves LoRA adapters unmerged (merging would re-quantize): the engine's
    greedy text equals peft's own `generate` over the same int8 base, for the adapter and for
    the base, and the tied head stays int8 after the adapters load."""
    from peft import PeftModel

    folders = lora_folders(tokenizer, tmp_path, hidden=64)
    model = tiny_llama(tokenizer, hidden=64)
    int8_weights.quantize_int8(model)
    with Engine(model, tokenizer, adapters=folders, max_batch=8) as engine:
        results = {a: engine.generate(Request(ids(tokenizer, PROMPTS[0]),
                                              SamplingParams(max_tokens=12), a), timeout=60)
                   for a in ("poet", None)}
        stats = engine.stats()
        assert isinstance(engine.model.get_base_model().lm_head, int8_weights.Int8Linear)
    assert stats["dtype"] == "int8" and stats.get("adapter_merges", 0) == 0
    assert stats.get("weights_transposed", 0) == 0  # int8 weights keep the kernel's layout
    base = tiny_llama(tokenizer, hidden=64)
    int8_weights.quantize_int8(base)
    assert results[None].text == reference(base, tokenizer, PROMPTS[0], 12)
    tuned = PeftModel.from_pretrained(base, folders["poet"]).eval()
    assert results["poet"].text == reference(tuned, tokenizer, PROMPTS[0], 12)


def test_int8_leaves_layers_the_kernel_cannot_run_in_float():
    """Input widths that are not a multiple of 16 (which the kernel gets wrong or crashes on),
    tiny matrices and LoRA's own layers stay float; the others become Int8Linear and match
    the float product to about 1 %."""
    torch.manual_seed(0)
    net = torch.nn.ModuleDict({"wide": torch.nn.Linear(48, 40), "odd": torch.nn.Linear(40, 48),
                               "tiny": torch.nn.Linear(48, 8), "lora_A": torch.nn.Linear(48, 32)})
    wide = copy.deepcopy(net["wide"])
    assert int8_weights.quantize_int8(net) == 1
    assert isinstance(net["wide"], int8_weights.Int8Linear)
    assert all(type(net[k]) is torch.nn.Linear for k in ("odd", "tiny", "lora_A"))
    x = torch.randn(5, 48)
    relative = torch.linalg.norm(net["wide"](x) - wide(x)) / torch.linalg.norm(wide(x))
    assert float(relative) < 0.02


def test_choose_dtype_int8_pinned_or_only_where_the_manifest_passed_it(tokenizer):
    choose = engine_mod.choose_dtype
    model, choice = choose(tiny_llama(tokenizer, hidden=64), "int8", "cpu")
    assert (choice.dtype, choice.chosen_by, choice.engine_dtype) == ("int8", "config", None)
    assert int8_weights.is_int8(model)
    # without a manifest, auto times bfloat16 only: int8 needs a passed perplexity gate
    _, choice = choose(tiny_llama(tokenizer, hidden=64), "auto", "cpu", None)
    assert set(choice.timings_ms) == {"float32", "bfloat16"}
    model, choice = choose(tiny_llama(tokenizer, hidden=64), "auto", "cpu",
                           {"bfloat16": False, "int8": True})
    assert set(choice.timings_ms) == {"float32", "int8"} and "int8 decode" in choice.reason
    faster = engine_mod.faster_everywhere(engine_mod.speedups(choice.timings_ms, "int8"))
    assert choice.dtype == ("int8" if faster else "float32")
    assert int8_weights.is_int8(model) == faster
    _, choice = choose(tiny_llama(tokenizer, hidden=64), "auto", "cuda", {"int8": True})
    assert (choice.dtype, choice.chosen_by) == ("float32", "manifest")  # bf16 failed: no GPU int8
    # adapters run unmerged over int8 weights: with adapters served, auto leaves int8 out
    model, choice = choose(tiny_llama(tokenizer, hidden=64), "auto", "cpu",
                           {"bfloat16": False, "int8": True}, adapters=True)
    assert (choice.dtype, choice.chosen_by) == ("float32", "manifest")
    assert "int8 passed but is left out: adapters are served" in choice.reason
    assert not int8_weights.is_int8(model)
    _, choice = choose(tiny_llama(tokenizer, hidden=64), "auto", "cpu",
                       {"bfloat16": True, "int8": True}, adapters=True)
    assert set(choice.timings_ms) == {"float32", "bfloat16"} and "left out" in choice.reason
    model, choice = choose(tiny_llama(tokenizer, hidden=64), "int8", "cpu", adapters=True)
    assert choice.dtype == "int8" and int8_weights.is_int8(model)  # pinned: served anyway
