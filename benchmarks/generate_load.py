"""Load test of a text-generation bento: throughput, latency, time to first text, shedding.

    make bento experiment=shakespeare_lora          # or smoke_lm (tiny random Llama)
    BENTOML_HOME=bentoml_home .venv/bin/python benchmarks/generate_load.py \
        --model tuneship-shakespeare_lora

One `bentoml serve <model>:latest` on a free loopback port. Closed-loop asyncio + aiohttp
clients at each concurrency send `POST /generate` (greedy, `--max-new-tokens`, a Tiny
Shakespeare line as prompt) as soon as their last one returned; a client answered 503 waits as
its `Retry-After` says (`--retry-after 0` re-sends at once). The service batches concurrent
generations (bentos/engine.py: up to TUNESHIP_LLM_MAX_BATCH decoded together, TUNESHIP_LLM_MAX_QUEUE
waiting; beyond, 503 "busy"). Prints per concurrency: requests/s,
generated tokens/s, p50/p99 latency, answers by status; then time to the first streamed text
(`/generate_stream`, alone), time-to-ready and RSS of the server's process tree, and writes
them with the machine to benchmarks/results/generate_load.json (`--json`).

`--api openai` drives `/v1/completions` with the official AsyncOpenAI client (streamed) against
the bento, the bento decoding one request at a time, and `transformers serve
--continuous-batching` on the same weights (see "The OpenAI routes" below; JSON:
generate_load_openai.json); with `--url` it drives a service already running instead (no server
started, no RSS, nothing written: traffic for a dashboard). `--adapter-ab` measures LoRA
adapters mixed in one forward against one forward per adapter group, in process.

`--base-dir DIR --adapter-dir DIR` serves a base model folder plus a LoRA adapter without a built
bento or the registry: the base goes into the BentoML store as a model of its own, this checkout's
`bentos/generation.py` serves it (`bentoml serve --working-dir bentos`) with the adapter from
TUNESHIP_LLM_ADAPTERS, the clients name the adapter, and transformers serve gets the same weights
merged (base + adapter, `merge_and_unload`). `--before-engine FILE` adds `tuneship-before`: the
same service with that engine.py instead. `--prompt-tokens N` sends prompts of exactly N tokens.
`small-prefill` is the bento with TUNESHIP_LLM_MAX_PREFILL_TOKENS=256 (a burst's prompts prefilled
a few per step instead of in one pass: time to first text against throughput; 256 is now the CPU
default, so the variant differs from `tuneship` only on a GPU). `int8` is the bento with
TUNESHIP_LLM_DTYPE=int8: int8 weight-only linear layers (bentos/int8_weights.py), the runtime
`make optimize` scores against float32 and `llm_dtype: auto` serves where that gate passed it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import results  # benchmarks/results.py
from serve_load import OFFLINE, bento_command, running  # benchmarks/serve_load.py
from servers import add_server_args, free_port, percentile, stop, tree_rss  # benchmarks/servers.py

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = (Path(os.environ.get("TUNESHIP_DATA_DIR", ROOT.parent / "shared" / "data"))
               / "tiny_shakespeare" / "train.txt")


@dataclass
class Level:
    """One closed-loop run at a fixed concurrency."""

    concurrency: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    tokens: int = 0
    statuses: Counter = field(default_factory=Counter)

    def percentile(self, q: int) -> float:
        return percentile(self.latencies_ms, q)


def load_prompts(limit: int = 2000) -> list[str]:
    """Speaker lines of Tiny Shakespeare ("ROMEO:\\n" style), or synthetic ones."""
    if SHAKESPEARE.is_file():
        lines = SHAKESPEARE.read_text(encoding="utf-8").splitlines()
        prompts = [f"{line}\n" for line in lines if line.endswith(":") and len(line) < 30]
        if prompts:
            return prompts[:limit]
    return [f"SPEAKER {i}:\n" for i in range(limit)]


async def drive(url: str, prompts: list[str], concurrency: int, seconds: float,
                max_new_tokens: int, honour_retry_after: bool = True) -> Level:
    """`concurrency` clients, each sending its next generation when the last one answered."""
    level = Level(concurrency)
    rng = random.Random(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        start = time.perf_counter()
        deadline = start + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                body = {"prompt": rng.choice(prompts), "max_new_tokens": max_new_tokens}
                t0 = time.perf_counter()
                try:
                    async with session.post("/generate", json=body) as response:
                        raw = await response.read()
                        level.statuses[str(response.status)] += 1
                        retry_after = float(response.headers.get("retry-after", 0))
                except (TimeoutError, aiohttp.ClientError) as err:
                    level.statuses[type(err).__name__] += 1
                    continue
                if response.status == 200:
                    level.latencies_ms.append((time.perf_counter() - t0) * 1000)
                    level.tokens += json.loads(raw)["usage"]["completion_tokens"]
                elif honour_retry_after:
                    await asyncio.sleep(retry_after)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        level.seconds = time.perf_counter() - start
    return level


async def first_text(url: str, prompts: list[str], max_new_tokens: int, count: int) -> list[float]:
    """Milliseconds to the first streamed text of `count` lone /generate_stream requests."""
    waits = []
    async with aiohttp.ClientSession(url) as session:
        for prompt in prompts[:count]:
            t0 = time.perf_counter()
            async with session.post("/generate_stream", json={
                    "prompt": prompt, "max_new_tokens": max_new_tokens}) as response:
                response.raise_for_status()
                async for chunk in response.content.iter_any():
                    if chunk:
                        waits.append((time.perf_counter() - t0) * 1000)
                        break
                await response.read()
    return waits


def report(levels: list[Level]) -> str:
    lines = ["| c | req/s | tokens/s | p50 ms | p99 ms | answers |",
             "|---:|---:|---:|---:|---:|---|"]
    for lv in levels:
        ok = len(lv.latencies_ms)
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(lv.statuses.items()))
        lines.append(f"| {lv.concurrency} | {ok / lv.seconds:.2f} | {lv.tokens / lv.seconds:.1f} "
                     f"| {lv.percentile(50):.0f} | {lv.percentile(99):.0f} | {answers} |")
    return "\n".join(lines)


def result_rows(levels: list[Level]) -> list[dict]:
    """The printed table as rows (benchmarks/results.py)."""
    return [{"c": lv.concurrency, "req/s": round(len(lv.latencies_ms) / lv.seconds, 2),
             "tokens/s": round(lv.tokens / lv.seconds, 1), "p50 ms": round(lv.percentile(50)),
             "p99 ms": round(lv.percentile(99)),
             "answers": ", ".join(f"{k}: {v}" for k, v in sorted(lv.statuses.items()))}
            for lv in levels]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_args(parser, model="tuneship-smoke_lm", concurrency=[1, 4, 24], duration=20.0)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--retry-after", type=int, choices=[0, 1], default=1,
                        help="1: a client answered 503 waits as Retry-After says; 0: re-sends")
    parser.add_argument("--log", type=Path, default=Path("/tmp/tuneship-bench/generate.log"))
    add_openai_args(parser)
    results.add_args(parser, "generate_load")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.update(OFFLINE)
    if args.adapter_ab:
        adapter_ab(args)
        return
    if args.api == "openai":
        openai_main(args)
        return
    args.log.parent.mkdir(parents=True, exist_ok=True)
    bento = args.bento or f"{args.model.lower()}:latest"
    prompts = load_prompts()
    port = free_port()
    print(f"-- {bento}: starting (log {args.log})", flush=True)
    with running(bento_command(bento, port), {}, port, args.log, args.ready_timeout,
                 "generate") as (url, server):
        asyncio.run(drive(url, prompts, 1, 3, args.max_new_tokens))  # warm-up
        levels = []
        for concurrency in args.concurrency:
            levels.append(asyncio.run(drive(url, prompts, concurrency, args.duration,
                                            args.max_new_tokens, bool(args.retry_after))))
            print(f"   c={concurrency:<3} done", flush=True)
        waits = asyncio.run(first_text(url, prompts, args.max_new_tokens, 10))
    backoff = "clients honour Retry-After" if args.retry_after else "clients re-send at once"
    print(f"\n{bento}, greedy, max_new_tokens {args.max_new_tokens}, {args.duration:.0f} s per "
          f"level, {backoff}, {os.cpu_count()} CPUs\n")
    print(report(levels))
    print(f"\nfirst streamed text, one request at a time: median {statistics.median(waits):.0f} ms"
          f" (of {len(waits)})")
    print(f"ready after {server.ready_s:.1f} s; RSS {server.rss_ready_mb:.0f} MiB at ready, "
          f"{server.rss_loaded_mb:.0f} MiB after load ({server.processes} processes)")
    where = results.write("generate_load", result_rows(levels), {
        "formats": {"req/s": "{:.2f}", "tokens/s": "{:.1f}"}, "note": args.note,
        "notes": [f"first streamed text, one request at a time: median "
                  f"{statistics.median(waits):.0f} ms (of {len(waits)}); ready after "
                  f"{server.ready_s:.1f} s, RSS {server.rss_loaded_mb:.0f} MiB after load"],
        "bento": bento, "max_new_tokens": args.max_new_tokens, "duration_s": args.duration,
        "clients": backoff, "first_text_ms": waits, "ready_s": server.ready_s,
        "rss_ready_mib": server.rss_ready_mb, "rss_loaded_mib": server.rss_loaded_mb,
        "processes": server.processes,
    }, args.json)
    print(f"\nwrote {where}")


# --- the OpenAI routes (/v1/completions) against transformers serve ----------------------------
#
#   BENTOML_HOME=bentoml_home .venv/bin/python benchmarks/generate_load.py --api openai \
#       --model tuneship-smoke_lm --concurrency 1 4 16 32 --duration 20
#
# Three servers on free loopback ports, started together and driven one at a time, the variants
# taking turns at each concurrency (so a change in the machine's load hits all of them): the
# bento (bentos/engine.py, continuous batching), the same bento with TUNESHIP_LLM_MAX_BATCH=1 (one
# request decoded at a time: what the service did before the engine), and `transformers serve
# --continuous-batching --attn-implementation sdpa` on the same weights. Closed-loop AsyncOpenAI
# clients stream `completions.create(max_tokens=--max-new-tokens, temperature=0)`; per level:
# output tokens/s (usage when the server sends it, else one token per non-empty chunk), time to
# the first text p50/p99, inter-chunk gap p50, errors by kind, and the peak RSS of the server's
# process tree.

VARIANTS = ("tuneship", "tuneship-before", "one-at-a-time", "small-prefill", "int8",
            "transformers-serve")
SMALL_PREFILL = 256  # the small-prefill variant's TUNESHIP_LLM_MAX_PREFILL_TOKENS


@dataclass
class StreamLevel:
    """One closed-loop run of streaming completions at a fixed concurrency."""

    variant: str
    concurrency: int
    seconds: float = 0.0
    tokens: int = 0
    requests: int = 0
    ttft_ms: list[float] = field(default_factory=list, repr=False)
    gaps_ms: list[float] = field(default_factory=list, repr=False)
    errors: Counter = field(default_factory=Counter)
    peak_rss_mb: float = 0.0


def add_openai_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", choices=["generate", "openai"], default="generate",
                        help="generate: POST /generate (above); openai: /v1/completions with "
                             "AsyncOpenAI against the variants of --variants")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--model-dir", type=Path,
                        help="weights + tokenizer for transformers serve (default: the bento's)")
    parser.add_argument("--base-dir", type=Path,
                        help="serve this base model folder (weights + tokenizer) from the "
                             "checkout's bentos/ instead of a built bento")
    parser.add_argument("--adapter-dir", type=Path,
                        help="with --base-dir: a LoRA adapter served beside it; clients ask for "
                             "it by name and transformers serve gets base + adapter merged")
    parser.add_argument("--adapter-name", default="shakespeare")
    parser.add_argument("--before-engine", type=Path,
                        help="with --base-dir: variant tuneship-before runs this engine.py")
    parser.add_argument("--prompt-tokens", type=int,
                        help="prompts of exactly this many tokens (else speaker lines)")
    parser.add_argument("--url", help="drive this running service's /v1 (no server started; "
                                      "--model names the model to ask for; no RSS column)")
    parser.add_argument("--api-key", default=os.environ.get("TUNESHIP_API_KEY", "bench"),
                        help="bearer key for --url (default: $TUNESHIP_API_KEY)")
    parser.add_argument("--adapter-ab", action="store_true",
                        help="in-process A/B of LoRA adapters mixed in one forward vs one "
                             "forward per adapter group (bentos/engine.py adapter_mode)")


def served_folder(bento: str, into: Path) -> Path:
    """One folder with the bento model's weights and tokenizer (transformers serve wants both)."""
    from serve_load import model_files

    model_dir, tokenizer_dir = model_files(bento)
    into.mkdir(parents=True, exist_ok=True)
    for source in (Path(model_dir), Path(tokenizer_dir)):
        for item in source.iterdir():
            link = into / item.name
            if not link.exists():
                link.symlink_to(item.resolve())
    return into


@contextlib.contextmanager
def serving(cmd: list[str], env: dict[str, str], port: int, log: Path, ready_path: str,
            timeout: float):
    """Start a server in its own session; yield (url, proc, seconds to ready); stop it."""
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, **OFFLINE, **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    try:
        start = time.perf_counter()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited ({proc.returncode}); see {log}")
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"{url} not ready after {timeout:.0f} s; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}{ready_path}", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        yield url, proc, time.perf_counter() - start
    finally:
        stop(proc)


async def drive_openai(url: str, model: str, prompts: list[str], variant: str, concurrency: int,
                       seconds: float, max_tokens: int, pid: int | None,
                       api_key: str = "bench") -> StreamLevel:
    """`concurrency` AsyncOpenAI clients streaming completions back to back for `seconds`
    (the peak RSS of process `pid`'s tree sampled meanwhile, when given)."""
    import openai

    level = StreamLevel(variant, concurrency)
    rng = random.Random(concurrency)
    stop_sampling = asyncio.Event()

    async def sample_rss() -> None:
        while pid is not None and not stop_sampling.is_set():
            level.peak_rss_mb = max(level.peak_rss_mb, tree_rss(pid)[0] / 2**20)
            await asyncio.sleep(0.5)

    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0,
                                  timeout=300) as api:
        start = time.perf_counter()
        deadline = start + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                t0 = last = time.perf_counter()
                first, chunks, usage = None, 0, None
                try:
                    stream = await api.completions.create(
                        model=model, prompt=rng.choice(prompts), max_tokens=max_tokens,
                        temperature=0, stream=True, stream_options={"include_usage": True})
                    async for chunk in stream:
                        if chunk.usage is not None:
                            usage = chunk.usage.completion_tokens
                        if chunk.choices and chunk.choices[0].text:
                            now = time.perf_counter()
                            if first is None:
                                first = now - t0
                            else:
                                level.gaps_ms.append((now - last) * 1000)
                            last, chunks = now, chunks + 1
                except openai.APIStatusError as err:
                    level.errors[str(err.status_code)] += 1
                    await asyncio.sleep(float(err.response.headers.get("retry-after", 0)))
                    continue
                except (openai.APIError, httpx.HTTPError, OSError) as err:
                    level.errors[type(err).__name__] += 1
                    continue
                level.requests += 1
                level.tokens += usage if usage is not None else chunks
                if first is not None:
                    level.ttft_ms.append(first * 1000)

        sampler = asyncio.create_task(sample_rss())
        await asyncio.gather(*(client() for _ in range(concurrency)))
        level.seconds = time.perf_counter() - start
        stop_sampling.set()
        await sampler
    return level


def variant_command(variant: str, bento: str, port: int, folder: Path,
                    source: dict[str, Path] | None = None) -> tuple[list[str], dict]:
    """The command line and environment of one variant. `source`: variant -> a bentos/ folder to
    serve from (--base-dir) instead of the built bento."""
    if variant == "transformers-serve":
        exe = str(Path(sys.executable).with_name("transformers"))
        # The same KV room as the engine's default budget (32 blocks of 256 = 8192 tokens):
        # left to size itself on a CPU, its cache took 14 GiB of RSS.
        return [exe, "serve", str(folder), "--continuous-batching", "--attn-implementation",
                "sdpa", "--device", "cpu", "--cb-block-size", "256", "--cb-num-blocks", "32",
                "--cb-max-batch-tokens", "2048", "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "warning"], {}
    env = {"one-at-a-time": {"TUNESHIP_LLM_MAX_BATCH": "1"},
           "small-prefill": {"TUNESHIP_LLM_MAX_PREFILL_TOKENS": str(SMALL_PREFILL)},
           "int8": {"TUNESHIP_LLM_DTYPE": "int8"}}.get(variant, {})
    if source:
        tree = source.get(variant, source["tuneship"])
        return [str(Path(sys.executable).with_name("bentoml")), "serve", "generation:TuneshipLM",
                "--working-dir", str(tree), "--host", "127.0.0.1", "--port", str(port)], env
    return bento_command(bento, port), env


BENCH_MODEL = "tuneship-bench-base"


def stored_base(base_dir: Path) -> str:
    """`base_dir` as a model in the BentoML store (once per folder): the metadata the LM service
    reads (the registered model's, with this project's inference defaults)."""
    import hashlib
    import shutil

    import bentoml

    digest = hashlib.sha256(str(base_dir.resolve()).encode()).hexdigest()[:12]
    with contextlib.suppress(bentoml.exceptions.NotFound):
        for model in bentoml.models.list(BENCH_MODEL):
            if model.info.labels.get("folder") == digest:
                return str(model.tag)
    meta = {"name": BENCH_MODEL, "version": "1", "alias": "bench", "task": "text-generation",
            "transformers": {"model": "model", "tokenizer": "model", "torch_dtype": "float32"},
            "generation": {"max_new_tokens": 64, "repetition_penalty": 1.1},
            "metrics": {}, "lineage": {"base_dir": str(base_dir.resolve())}}
    with bentoml.models.create(BENCH_MODEL, metadata=meta, labels={"folder": digest}) as model:
        target = Path(model.path) / "model"
        target.mkdir()
        for item in base_dir.iterdir():
            if item.is_file():
                try:
                    os.link(item, target / item.name)
                except OSError:
                    shutil.copy2(item, target / item.name)
    return str(model.tag)


def merged_folder(base_dir: Path, adapter_dir: Path, into: Path) -> Path:
    """Base + adapter merged into one folder (weights and tokenizer), made once."""
    if (into / "config.json").is_file():
        return into
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    tmp = into.with_name(into.name + ".partial")
    merged.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp)
    tmp.rename(into)
    return into


def source_tree(engine: Path | None, into: Path) -> Path:
    """A snapshot of this checkout's bentos/ (with `engine` as engine.py when given), so edits
    made while the benchmark runs do not reach the servers."""
    import shutil

    if into.exists():
        shutil.rmtree(into)
    shutil.copytree(ROOT / "bentos", into, ignore=shutil.ignore_patterns("__pycache__"))
    if engine is not None:
        shutil.copy2(engine, into / "engine.py")
    return into


def token_prompts(tokenizer_dir: Path, tokens: int, limit: int = 500) -> list[str]:
    """Tiny Shakespeare passages of exactly `tokens` tokens (starting at a line), as text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = SHAKESPEARE.read_text(encoding="utf-8") if SHAKESPEARE.is_file() else \
        " ".join(f"SPEAKER {i}: words and more words." for i in range(20000))
    prompts, offset = [], 0
    while len(prompts) < limit and offset < len(text):
        start = text.find("\n", offset) + 1
        if start <= 0:
            break
        ids = tokenizer(text[start:start + tokens * 8])["input_ids"][:tokens]
        prompt = tokenizer.decode(ids)
        if len(tokenizer(prompt)["input_ids"]) == tokens:
            prompts.append(prompt)
        offset = start + len(prompt)
    return prompts


def drive_running(args: argparse.Namespace) -> None:
    """--url: the levels against a service already running (e.g. behind `make monitoring-up`)."""
    prompts = (token_prompts(args.model_dir, args.prompt_tokens)
               if args.prompt_tokens and args.model_dir else load_prompts())
    levels = []
    for concurrency in args.concurrency:
        levels.append(asyncio.run(drive_openai(args.url, args.model, prompts, "tuneship",
                                               concurrency, args.duration, args.max_new_tokens,
                                               None, args.api_key)))
        print(f"   c={concurrency:<3} done", flush=True)
    print(f"\n{args.url} ({args.model}), /v1/completions streamed, greedy, max_tokens "
          f"{args.max_new_tokens}, {args.duration:.0f} s per level\n")
    print(openai_report([{k: v for k, v in row.items() if k != "peak RSS MiB"}
                         for row in openai_rows(levels)]))


def openai_main(args: argparse.Namespace) -> None:
    if args.url:
        drive_running(args)
        return
    bento = args.bento or f"{args.model.lower()}:latest"
    args.log.parent.mkdir(parents=True, exist_ok=True)
    source: dict[str, Path] | None = None
    env_all: dict[str, str] = {}
    ours = args.model
    if args.base_dir:  # the checkout's service on a base folder (+ adapter), no built bento
        tag = stored_base(args.base_dir)
        source = {"tuneship": source_tree(None, args.log.parent / "bentos-now")}
        if "tuneship-before" in args.variants:
            if not args.before_engine:
                raise SystemExit("variant tuneship-before needs --before-engine FILE")
            source["tuneship-before"] = source_tree(args.before_engine,
                                                    args.log.parent / "bentos-before")
        env_all["TUNESHIP_MODEL_TAG"] = tag
        ours = BENCH_MODEL
        folder = args.base_dir
        if args.adapter_dir:
            env_all["TUNESHIP_LLM_ADAPTERS"] = f"{args.adapter_name}={args.adapter_dir.resolve()}"
            ours = args.adapter_name
            folder = merged_folder(args.base_dir, args.adapter_dir,
                                   args.log.parent / f"merged-{args.adapter_name}")
        bento = f"{tag} + {args.adapter_name}" if args.adapter_dir else tag
        folder = args.model_dir or folder
    else:
        folder = args.model_dir or served_folder(bento,
                                                 Path(tempfile.mkdtemp(prefix="tuneship-w-")))
    prompts = token_prompts(folder, args.prompt_tokens) if args.prompt_tokens else load_prompts()
    hf_home = Path(tempfile.mkdtemp(prefix="tuneship-hf-"))
    (hf_home / "hub").mkdir()  # transformers serve answers 500 without a hub cache folder
    levels: list[StreamLevel] = []
    starts: dict[str, float] = {}
    dtypes: dict[str, str] = {"transformers-serve": "float32"}
    with contextlib.ExitStack() as servers:  # all up at once; levels interleave the variants
        up = {}
        for variant in args.variants:
            port = free_port()
            cmd, env = variant_command(variant, bento, port, folder, source)
            log = args.log.with_name(f"openai-{variant}.log")
            print(f"-- {variant}: starting (log {log})", flush=True)
            url, proc, starts[variant] = servers.enter_context(serving(
                cmd, {**env_all, **env, "HF_HOME": str(hf_home)}, port, log,
                "/health" if variant == "transformers-serve" else "/readyz", args.ready_timeout))
            up[variant] = (url, proc, str(folder) if variant == "transformers-serve" else ours)
            if variant != "transformers-serve":
                dtypes[variant] = served_dtype(url)
                print(f"   {variant} serves {dtypes[variant]}", flush=True)
        for variant, (url, proc, model) in up.items():  # transformers' CB sets up on first use
            asyncio.run(drive_openai(url, model, prompts, variant, 4, 5, args.max_new_tokens,
                                     proc.pid))
        for concurrency in args.concurrency:
            for variant, (url, proc, model) in up.items():
                levels.append(asyncio.run(drive_openai(url, model, prompts, variant, concurrency,
                                                       args.duration, args.max_new_tokens,
                                                       proc.pid)))
            print(f"   c={concurrency:<3} done", flush=True)
    levels.sort(key=lambda lv: args.variants.index(lv.variant))
    rows = [{"variant": row["variant"], "dtype": dtypes.get(row["variant"], ""),
             **{k: v for k, v in row.items() if k != "variant"}} for row in openai_rows(levels)]
    shape = (f"{args.prompt_tokens}-token prompts" if args.prompt_tokens
             else "speaker-line prompts")
    print(f"\n{bento}, /v1/completions streamed, greedy, {shape}, max_tokens "
          f"{args.max_new_tokens}, {args.duration:.0f} s per level, {os.cpu_count()} CPUs, load "
          f"average {os.getloadavg()[0]:.2f}\n")
    print(openai_report(rows))
    ratios = openai_ratios(levels)
    for line in ratios:
        print(line)
    print("ready after: " + ", ".join(f"{v} {s:.1f} s" for v, s in starts.items()))
    where = results.write("generate_load_openai", rows, {
        "formats": {"tokens/s": "{:.1f}"}, "note": args.note, "notes": ratios,
        "bento": bento, "max_tokens": args.max_new_tokens, "duration_s": args.duration,
        "prompt_tokens": args.prompt_tokens, "adapter": str(args.adapter_dir or ""),
        "ready_s": starts}, args.json.with_name("generate_load_openai.json")
        if args.json == results.default_path("generate_load") else args.json)
    print(f"\nwrote {where}")


def served_dtype(url: str) -> str:
    """The dtype (and CPU weight layout) the service chose, from its /model card."""
    card = httpx.get(f"{url}/model", timeout=10).json().get("served", {}).get("dtype", {})
    layout = card.get("weight_layout")
    return f"{card.get('dtype', '?')} ({card.get('chosen_by', '?')}" + (
        f", {layout})" if layout else ")")


def openai_rows(levels: list[StreamLevel]) -> list[dict]:
    return [{"variant": lv.variant, "c": lv.concurrency,
             "tokens/s": round(lv.tokens / lv.seconds, 1), "requests": lv.requests,
             "TTFT p50 ms": round(percentile(lv.ttft_ms, 50)),
             "TTFT p99 ms": round(percentile(lv.ttft_ms, 99)),
             "ITL p50 ms": round(percentile(lv.gaps_ms, 50), 1),
             "errors": ", ".join(f"{k}: {v}" for k, v in sorted(lv.errors.items())) or "0",
             "peak RSS MiB": round(lv.peak_rss_mb)} for lv in levels]


def openai_report(rows: list[dict]) -> str:
    header = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if h in ("variant", "errors") else "---:" for h in header) + "|"]
    lines += ["| " + " | ".join(str(row[h]) for h in header) + " |" for row in rows]
    return "\n".join(lines)


def openai_ratios(levels: list[StreamLevel]) -> list[str]:
    """tokens/s of the engine over each other variant, per concurrency (same run), and of the
    engine at each concurrency over its own c=1."""
    rate = {(lv.variant, lv.concurrency): lv.tokens / lv.seconds for lv in levels}
    lines = []
    for other in VARIANTS[1:]:
        pairs = [(c, rate[("tuneship", c)] / rate[(other, c)]) for (v, c) in rate
                 if v == other and ("tuneship", c) in rate and rate[(other, c)] > 0]
        if pairs:
            lines.append(f"tuneship / {other} tokens/s: " +
                         ", ".join(f"c={c} {r:.2f}x" for c, r in pairs))
    own = {c: r for (v, c), r in rate.items() if v == "tuneship"}
    if own.get(1):
        lines.append("tuneship at c / tuneship at c=1 tokens/s: " +
                     ", ".join(f"c={c} {r / own[1]:.2f}x" for c, r in own.items() if c != 1))
    return lines


# --- LoRA adapters: mixed in one forward vs one forward per adapter group ---------------------


def adapter_ab(args: argparse.Namespace) -> None:
    """Tokens/s of the engine on one workload, adapters mixed vs grouped, interleaved reps."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(ROOT / "bentos"))
    from engine import Engine, Request, SamplingParams  # bentos/engine.py (no BentoML)
    from runtime import torch_threads

    bento = args.bento or f"{args.model.lower()}:latest"
    folder = args.model_dir or served_folder(bento, Path(tempfile.mkdtemp(prefix="tuneship-w-")))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tmp = Path(tempfile.mkdtemp(prefix="tuneship-lora-"))
    adapters = {}
    for i, name in enumerate(("a", "b")):
        base = AutoModelForCausalLM.from_pretrained(folder)
        torch.manual_seed(i)
        get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"],
                                        init_lora_weights=False)).save_pretrained(tmp / name)
        adapters[name] = str(tmp / name)
    prompts = load_prompts()[:24]
    names = [None, "a", "b"]
    work = [Request(tokenizer(p)["input_ids"], SamplingParams(max_tokens=args.max_new_tokens,
                                                              ignore_eos=True), names[i % 3])
            for i, p in enumerate(prompts)]
    base_only = [Request(r.prompt_ids, r.params) for r in work]

    async def run(engine: Engine, requests: list[Request]) -> float:
        start = time.perf_counter()
        streams = [engine.submit(Request(r.prompt_ids, r.params, r.adapter)) for r in requests]
        done = await asyncio.gather(*(s.collect() for s in streams))
        return sum(d.completion_tokens for d in done) / (time.perf_counter() - start)

    rates: dict[str, list[float]] = {"mixed": [], "grouped": [], "no adapters": []}
    engines = {}
    for mode in ("mixed", "grouped"):
        engines[mode] = Engine(AutoModelForCausalLM.from_pretrained(folder), tokenizer, adapters,
                               adapter_mode=mode, threads=torch_threads(), max_batch=32)
    engines["no adapters"] = Engine(AutoModelForCausalLM.from_pretrained(folder), tokenizer,
                                    threads=torch_threads(), max_batch=32)
    for engine in engines.values():  # warm-up
        asyncio.run(run(engine, work[:3] if engine.adapters else base_only[:3]))
    for _ in range(3):
        for mode, engine in engines.items():
            rates[mode].append(asyncio.run(run(engine, work if engine.adapters else base_only)))
    for engine in engines.values():
        engine.close()
    med = {mode: statistics.median(r) for mode, r in rates.items()}
    print(f"\n{folder}: {len(work)} requests (base, a, b in turn) x {args.max_new_tokens} tokens,"
          f" {torch_threads()} threads, 3 interleaved reps, median tokens/s; load average "
          f"{os.getloadavg()[0]:.2f}")
    for mode, rate in med.items():
        print(f"  {mode:12} {rate:7.1f}   ({', '.join(f'{x:.1f}' for x in rates[mode])})")
    print(f"  mixed / grouped {med['mixed'] / med['grouped']:.2f}x; mixed / no adapters "
          f"{med['mixed'] / med['no adapters']:.2f}x")


if __name__ == "__main__":
    main()
