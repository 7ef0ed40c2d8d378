"""Load test of a text-generation bento: throughput, latency, time to first text, shedding.

    make bento experiment=shakespeare_lora          # or smoke_lm (tiny random Llama)
    BENTOML_HOME=bentoml_home .venv/bin/python benchmarks/generate_load.py \
        --model tuneship-shakespeare_lora

One `bentoml serve <model>:latest` on a free loopback port. Closed-loop asyncio + aiohttp
clients at each concurrency send `POST /generate` (greedy, `--max-new-tokens`, a Tiny
Shakespeare line as prompt) as soon as their last one returned; a client answered 503 waits as
its `Retry-After` says (`--retry-after 0` re-sends at once). The service runs one generation at
a time and holds at most 16, running or waiting (bentos/generation.py), so throughput should
stay flat as concurrency grows, latency grow with the queue, and clients beyond 16 get 503
"busy" instead of unbounded waits. Prints per concurrency: requests/s,
generated tokens/s, p50/p99 latency, answers by status; then time to the first streamed text
(`/generate_stream`, alone), time-to-ready and RSS of the server's process tree, and writes
them with the machine to benchmarks/results/generate_load.json (`--json`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import results  # benchmarks/results.py
from serve_load import OFFLINE, bento_command, running  # benchmarks/serve_load.py
from servers import add_server_args, free_port, percentile  # benchmarks/servers.py

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
    results.add_args(parser, "generate_load")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.update(OFFLINE)
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


if __name__ == "__main__":
    main()
