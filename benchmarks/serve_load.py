"""Load test of the serving bento: adaptive batching on, off, and a plain FastAPI baseline.

    make bento experiment=smoke
    BENTOML_HOME=bentoml_home .venv/bin/python benchmarks/serve_load.py --model tuneship-smoke
    BENTOML_HOME=bentoml_home .venv/bin/python benchmarks/serve_load.py \
        --model tuneship-sst2_minilm --duration 15          # the MiniLM champion

Each server runs alone on a free loopback port and is stopped before the next starts:
1. `bentoml serve <model>:latest` (the built bento), batching on (a request alone in flight
   has a batching API of its own);
2. `shared` (not run by default): the same with TUNESHIP_LONE_DISPATCH=0, one batching API for
   every request, as before lone dispatch; `fp32` (not by default): batching on, served by
   eager fp32 (TUNESHIP_RUNTIME=torch-fp32) whatever runtimes the model has;
   `recorded` (not by default): batching on with the inference table at 100 % sampling
   (TUNESHIP_INFERENCE_LOG_DIR under --log-dir, privacy `redacted`): the recording's cost;
3. the same bento with TUNESHIP_BATCHING=0 (each request is its own forward pass);
4. a hand-written FastAPI app calling `transformers.pipeline` on the same model files.
Each server is warmed up at c=8 first, so a batcher has learned from concurrent traffic
before the lone client (c=1) comes, as it would have in service.
On a shared machine use `--rounds N`: every server is started (one after the other, each
timed to ready) and kept up, and each level runs on every variant in turn, N times over, so a
busy spell falls on all variants alike; each row then pools its N runs.
Clients are asyncio + aiohttp on the same machine (they share its cores), closed loop: each of
`c` clients sends one request (`--texts` texts from SST-2) as soon as its last one returns.
(Not httpx: its connection pool is the bottleneck at c=32, ~90 req/s against a no-op server
on 2 cores where aiohttp does ~900.)
Prints throughput, p50/p99 latency and errors per concurrency, then time-to-ready and RSS
(the server's whole process tree). Last, with every server stopped, the model alone (no HTTP):
texts/s one at a time and in batches as large as each concurrency, cut into forward passes as
the service does (bentos/packing.py). Their ratio is the most batching can gain on this machine.
The tables and raw figures go to benchmarks/results/serve_load.json (`--json`), with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import httpx
import results  # benchmarks/results.py
from pydantic import BaseModel, Field
from servers import add_server_args, free_port, percentile, stop, tree_rss  # benchmarks/

ROOT = Path(__file__).resolve().parents[1]
SST2 = Path(os.environ.get("TUNESHIP_DATA_DIR", ROOT.parent / "shared" / "data")) / "sst2"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "BENTOML_DO_NOT_TRACK": "true"}


class BaselineRequest(BaseModel):
    """The baseline's request body (module level: FastAPI must resolve the annotation)."""

    texts: list[str] = Field(min_length=1, max_length=64)


@dataclass
class Phase:
    """One closed-loop run at a fixed concurrency."""

    variant: str
    concurrency: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    errors: Counter = field(default_factory=Counter)
    runs: list[float] = field(default_factory=list)  # req/s of each round (--rounds)

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def percentile(self, q: int) -> float:
        return percentile(self.latencies_ms, q)


@dataclass
class Server:
    """Start-up figures of one server variant."""

    variant: str
    ready_s: float
    rss_ready_mb: float
    rss_loaded_mb: float = 0.0
    processes: int = 0
    runtime: str = ""  # what a Tuneship bento serves with (GET /model), "" for the baseline


# --- load ---------------------------------------------------------------------------------------


async def drive(url: str, texts: list[str], per_request: int, concurrency: int,
                seconds: float, variant: str) -> Phase:
    """`concurrency` clients, each sending its next request when the last one answered."""
    phase = Phase(variant, concurrency)
    rng = random.Random(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                body = {"texts": rng.sample(texts, per_request)}
                t0 = time.perf_counter()
                try:
                    async with session.post("/classify", json=body) as response:
                        await response.read()
                        ok = response.status == 200
                        if not ok:
                            phase.errors[str(response.status)] += 1
                except (TimeoutError, aiohttp.ClientError) as err:
                    ok = False
                    phase.errors[type(err).__name__] += 1
                if ok:
                    phase.latencies_ms.append((time.perf_counter() - t0) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        phase.seconds = time.perf_counter() - start
    return phase


# --- servers ------------------------------------------------------------------------------------


def tree_rss_mb(pid: int) -> tuple[float, int]:
    """Resident memory of a process and all its descendants (MiB), and how many there are."""
    total, count = tree_rss(pid)
    return total / 2**20, count


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> float:
    """Seconds until GET /readyz answers 200 (raises if the server dies or times out)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - start
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


@contextlib.contextmanager
def running(cmd: list[str], env: dict[str, str], port: int, log: Path, timeout: float,
            variant: str):
    """Start a server, yield (url, Server figures) once ready, stop it afterwards."""
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, **OFFLINE, **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    try:
        ready = wait_ready(url, proc, timeout)
        rss, _ = tree_rss_mb(proc.pid)
        server = Server(variant, ready, rss, runtime=served_runtime(url))
        yield url, server
        server.rss_loaded_mb, server.processes = tree_rss_mb(proc.pid)
    finally:
        stop(proc)


def served_runtime(url: str) -> str:
    """The runtime a Tuneship classifier serves with (its /model card), "" if it names none."""
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
        return httpx.get(f"{url}/model", timeout=10).json()["runtime"]["name"]
    return ""


def bento_command(bento: str, port: int) -> list[str]:
    return [str(Path(sys.executable).with_name("bentoml")), "serve", bento,
            "--host", "127.0.0.1", "--port", str(port)]


def baseline_command(model_dir: str, tokenizer_dir: str, port: int) -> list[str]:
    return [sys.executable, __file__, "--baseline-server", "--model-dir", model_dir,
            "--tokenizer-dir", tokenizer_dir, "--port", str(port)]


def use_service_threads(torch) -> None:
    """The service's thread rule (bentos/common.py), so comparisons are about serving, not
    torch settings: TUNESHIP_TORCH_THREADS, else every usable core."""
    torch.set_num_threads(int(os.environ.get("TUNESHIP_TORCH_THREADS", 0))
                          or len(os.sched_getaffinity(0)))


def serve_baseline(model_dir: str, tokenizer_dir: str, port: int) -> None:
    """The hand-written baseline: FastAPI + transformers.pipeline, one request per call."""
    import torch
    import transformers
    import uvicorn
    from fastapi import FastAPI

    use_service_threads(torch)
    pipe = transformers.pipeline("text-classification", model=model_dir, tokenizer=tokenizer_dir)
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict:
        return {"ok": True}

    @app.post("/classify")
    def classify(request: BaselineRequest) -> dict:  # sync: FastAPI runs it in its thread pool
        return {"predictions": pipe(request.texts, truncation=True)}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def model_files(bento_tag: str) -> tuple[str, str]:
    """The model and tokenizer folders of the model a built bento serves."""
    import bentoml

    bento = bentoml.get(bento_tag)
    model = bentoml.models.get(bento.info.args["model_tag"])
    files = model.info.metadata["transformers"]
    return model.path_of(files["model"]), model.path_of(files["tokenizer"])


def load_packing():
    """bentos/packing.py (the bento's own module; bentos/ is not a package)."""
    spec = importlib.util.spec_from_file_location("packing", ROOT / "bentos" / "packing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_alone(model_dir: str, tokenizer_dir: str, texts: list[str], batch_sizes: list[int],
                seconds: float) -> dict[int, float]:
    """Texts/s of the bare model at each batch size: the service's passes, threads and dtype."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    packing = load_packing()
    budget, pass_cost = packing.DEFAULTS["cpu"]
    use_service_threads(torch)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    rng = random.Random(0)
    rates = {}
    for size in batch_sizes:
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            ids = tokenizer(rng.sample(texts, size), truncation=True)["input_ids"]
            with torch.inference_mode():
                for run in packing.plan_passes([len(x) for x in ids], budget, pass_cost):
                    batch = tokenizer.pad({"input_ids": [ids[i] for i in run]},
                                          return_tensors="pt")
                    model(**batch).logits.softmax(dim=-1).tolist()
            done += size
        rates[size] = done / (time.perf_counter() - start)
    return rates


# --- run and report -----------------------------------------------------------------------------


def load_texts(limit: int = 5000) -> list[str]:
    """SST-2 sentences (the serving data), or synthetic ones if the dataset is absent."""
    path = SST2 / "train.tsv"
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()[1 : limit + 1]
        return [line.split("\t")[0] for line in lines if line.strip()]
    words = ["the", "film", "is", "a", "gripping", "dull", "funny", "slow", "sharp", "mess"]
    rng = random.Random(0)
    return [" ".join(rng.choices(words, k=rng.randint(4, 30))) for _ in range(limit)]


def measure(variant: str, cmd: list[str], env: dict[str, str], port: int,
            args: argparse.Namespace, texts: list[str]) -> tuple[list[Phase], Server]:
    log = args.log_dir / f"{variant}.log"
    phases: list[Phase] = []
    print(f"-- {variant}: starting (log {log})", flush=True)
    with running(cmd, env, port, log, args.ready_timeout, variant) as (url, server):
        warm = asyncio.run(drive(url, texts, args.texts, 8, args.warmup, variant))
        print(f"   ready in {server.ready_s:.1f} s, warm-up {len(warm.latencies_ms)} requests",
              flush=True)
        for concurrency in args.concurrency:
            phase = asyncio.run(drive(url, texts, args.texts, concurrency, args.duration,
                                      variant))
            phases.append(phase)
            print(f"   c={concurrency:<3} {phase.throughput:8.1f} req/s  "
                  f"p50 {phase.percentile(50):7.1f} ms  p99 {phase.percentile(99):7.1f} ms  "
                  f"errors {sum(phase.errors.values())}", flush=True)
    return phases, server


def measure_interleaved(specs: list[tuple[str, list[str], dict[str, str], int]],
                        args: argparse.Namespace,
                        texts: list[str]) -> tuple[list[Phase], list[Server]]:
    """Every server up at once; each level on each variant in turn, `args.rounds` times."""
    pooled: dict[tuple[str, int], Phase] = {}
    with contextlib.ExitStack() as stack:
        urls, servers = {}, []
        for name, cmd, env, port in specs:
            log = args.log_dir / f"{name}.log"
            print(f"-- {name}: starting (log {log})", flush=True)
            url, server = stack.enter_context(running(cmd, env, port, log, args.ready_timeout,
                                                      name))
            urls[name] = url
            servers.append(server)
            print(f"   ready in {server.ready_s:.1f} s", flush=True)
        for name, url in urls.items():
            asyncio.run(drive(url, texts, args.texts, 8, args.warmup, name))
        for round_ in range(args.rounds):
            for concurrency in args.concurrency:
                for name, url in urls.items():
                    phase = asyncio.run(drive(url, texts, args.texts, concurrency,
                                              args.duration, name))
                    print(f"   round {round_ + 1} {name:<24} c={concurrency:<3} "
                          f"{phase.throughput:8.1f} req/s  p50 {phase.percentile(50):7.1f} ms  "
                          f"errors {sum(phase.errors.values())}", flush=True)
                    into = pooled.setdefault((name, concurrency), Phase(name, concurrency))
                    into.seconds += phase.seconds
                    into.latencies_ms += phase.latencies_ms
                    into.errors.update(phase.errors)
                    into.runs.append(round(phase.throughput, 1))
    return sorted(pooled.values(), key=lambda p: ([s.variant for s in servers].index(p.variant),
                                                  p.concurrency)), servers


def report_alone(rates: dict[int, float], per_request: int) -> str:
    one = rates[min(rates)]
    lines = ["| model alone, no HTTP | texts/s | vs one at a time |", "|---|---:|---:|"]
    lines += [f"| batch {size} | {rate:.1f} | {rate / one:.2f}x |" for size, rate in rates.items()]
    top = max(rates)
    lines += ["", f"model alone: batches of {top} texts run {rates[top] / rates[per_request]:.2f}x "
                  f"as fast as {per_request} at a time, the headroom batching has here at "
                  f"c={top // per_request}"]
    return "\n".join(lines)


def report(phases: list[Phase], servers: list[Server], per_request: int) -> str:
    lines = ["| variant | c | req/s | texts/s | p50 ms | p99 ms | errors | requests |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in phases:
        errors = sum(p.errors.values())
        detail = f" ({dict(p.errors)})" if errors else ""
        lines.append(f"| {p.variant} | {p.concurrency} | {p.throughput:.1f} | "
                     f"{p.throughput * per_request:.1f} | {p.percentile(50):.1f} | "
                     f"{p.percentile(99):.1f} | {errors}{detail} | {len(p.latencies_ms)} |")
    lines += ["", "| variant | runtime | ready s | RSS at ready MiB | RSS after load MiB | "
                  "processes |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {s.variant} | {s.runtime or '-'} | {s.ready_s:.1f} | {s.rss_ready_mb:.0f} | "
              f"{s.rss_loaded_mb:.0f} | {s.processes} |" for s in servers]
    return "\n".join([*lines, "", *ratio_lines(phases)])


def ratio_lines(phases: list[Phase]) -> list[str]:
    """Throughput of each BentoML variant over the FastAPI baseline (and batching on/off) at
    each concurrency the baseline ran."""
    by = {(p.variant, p.concurrency): p.throughput for p in phases}
    ratios = []
    for c in sorted({p.concurrency for p in phases}):
        base = by.get(("fastapi-pipeline", c))
        parts = [f"{v.removeprefix('bentoml-')}/fastapi {by[(v, c)] / base:.2f}x"
                 for v in VARIANTS if (v, c) in by and base and v != "fastapi-pipeline"]
        on, off = by.get(("bentoml-batching", c)), by.get(("bentoml-no-batching", c))
        if on and off:
            parts.insert(0, f"batching on/off {on / off:.2f}x")
        recorded = by.get(("bentoml-batching-recorded", c))
        if on and recorded:
            parts.insert(0, f"recorded/on {recorded / on:.3f}x")
        if parts:
            ratios.append(f"c={c}: " + ", ".join(parts))
    return ratios


VARIANTS = ("bentoml-batching", "bentoml-batching-fp32", "bentoml-batching-shared",
            "bentoml-batching-recorded", "bentoml-no-batching", "fastapi-pipeline")


def result_tables(phases: list[Phase], servers: list[Server], alone: dict[int, float],
                  per_request: int) -> tuple[list[dict], dict[str, list[dict]]]:
    """The printed tables as rows (benchmarks/results.py): load, then servers and model alone."""
    rows = [{"variant": p.variant, "c": p.concurrency, "req/s": round(p.throughput, 1),
             "texts/s": round(p.throughput * per_request, 1),
             "p50 ms": round(p.percentile(50), 1), "p99 ms": round(p.percentile(99), 1),
             "errors": sum(p.errors.values()), "requests": len(p.latencies_ms)} for p in phases]
    tables = {"servers": [{"variant": s.variant, "runtime": s.runtime or None,
                           "ready s": round(s.ready_s, 1),
                           "RSS at ready MiB": round(s.rss_ready_mb),
                           "RSS after load MiB": round(s.rss_loaded_mb),
                           "processes": s.processes} for s in servers]}
    if alone:
        one = alone[min(alone)]
        tables["model_alone"] = [{"batch": size, "texts/s": round(rate, 1),
                                  "vs one at a time": round(rate / one, 2)}
                                 for size, rate in alone.items()]
    return rows, tables


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_args(parser, model="tuneship-smoke", concurrency=[1, 8, 32], duration=10.0)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up at c=8")
    parser.add_argument("--texts", type=int, default=1, help="texts per request")
    parser.add_argument("--only", nargs="+", choices=["on", "fp32", "shared", "recorded", "off", "fastapi"],
                        default=["on", "off", "fastapi"],
                        help="variants, in this order (shared: one batching API for all; "
                             "fp32: eager fp32 whatever the model's runtimes; recorded: "
                             "on + the inference table at 100 %)")
    parser.add_argument("--runtime", help="TUNESHIP_RUNTIME for the bento variants but fp32 "
                                          "(default: each server chooses at start)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="keep every server up and run the levels on each in turn, this "
                             "many times (0: each server alone, one after the other)")
    parser.add_argument("--alone", type=float, default=10.0,
                        help="seconds per batch size for the model alone (0: skip)")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/tuneship-bench"))
    results.add_args(parser, "serve_load", "also write the tables and raw figures here")
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer-dir", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.baseline_server:
        serve_baseline(args.model_dir, args.tokenizer_dir, args.port)
        return
    os.environ.update(OFFLINE)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    bento = args.bento or f"{args.model.lower()}:latest"
    model_dir, tokenizer_dir = model_files(bento)
    texts = load_texts()
    pinned = {"TUNESHIP_RUNTIME": args.runtime} if args.runtime else {}
    variants = {
        "on": ("bentoml-batching", lambda p: bento_command(bento, p),
               {"TUNESHIP_BATCHING": "1", "TUNESHIP_LONE_DISPATCH": "1", **pinned}),
        "fp32": ("bentoml-batching-fp32", lambda p: bento_command(bento, p),
                 {"TUNESHIP_BATCHING": "1", "TUNESHIP_LONE_DISPATCH": "1",
                  "TUNESHIP_RUNTIME": "torch-fp32"}),
        "shared": ("bentoml-batching-shared", lambda p: bento_command(bento, p),
                   {"TUNESHIP_BATCHING": "1", "TUNESHIP_LONE_DISPATCH": "0", **pinned}),
        "recorded": ("bentoml-batching-recorded", lambda p: bento_command(bento, p),
                     {"TUNESHIP_BATCHING": "1", "TUNESHIP_LONE_DISPATCH": "1", **pinned,
                      "TUNESHIP_INFERENCE_LOG_DIR": str(args.log_dir / "inference_log"),
                      "TUNESHIP_INFERENCE_LOG_SAMPLE_RATE": "1"}),
        "off": ("bentoml-no-batching", lambda p: bento_command(bento, p),
                {"TUNESHIP_BATCHING": "0", **pinned}),
        "fastapi": ("fastapi-pipeline", lambda p: baseline_command(model_dir, tokenizer_dir, p),
                    {}),
    }
    phases: list[Phase] = []
    servers: list[Server] = []
    ports = {key: free_port() for key in args.only}
    if args.rounds:
        specs = [(variants[k][0], variants[k][1](ports[k]), variants[k][2], ports[k])
                 for k in args.only]
        phases, servers = measure_interleaved(specs, args, texts)
    for key in [] if args.rounds else args.only:
        name, command, env = variants[key]
        got, server = measure(name, command(ports[key]), env, ports[key], args, texts)
        phases += got
        servers.append(server)
    print(f"\n{bento}, {args.texts} text(s) per request, {args.duration:.0f} s per level, "
          f"{os.cpu_count()} CPUs\n")
    print(report(phases, servers, args.texts))
    alone = {}
    if args.alone > 0:
        sizes = sorted({args.texts, *(c * args.texts for c in args.concurrency)})
        alone = model_alone(model_dir, tokenizer_dir, texts, sizes, args.alone)
        print("\n" + report_alone(alone, args.texts))
    rows, tables = result_tables(phases, servers, alone, args.texts)
    where = results.write("serve_load", rows, {
        "tables": tables, "notes": ratio_lines(phases), "note": args.note,
        "formats": {"req/s": "{:.1f}", "texts/s": "{:.1f}", "p50 ms": "{:.1f}",
                    "p99 ms": "{:.1f}", "ready s": "{:.1f}", "vs one at a time": "{:.2f}×"},
        "bento": bento, "texts_per_request": args.texts, "duration_s": args.duration,
        "rounds": args.rounds,
        "phases": [{**asdict(p), "throughput": p.throughput, "p50_ms": p.percentile(50),
                    "p99_ms": p.percentile(99), "latencies_ms": None} for p in phases],
        "servers": [asdict(s) for s in servers], "model_alone_texts_per_s": alone,
    }, args.json)
    print(f"\nwrote {where}")


if __name__ == "__main__":
    main()
