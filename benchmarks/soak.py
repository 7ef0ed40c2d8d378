"""Soak test of the classification service: steady concurrent load, then errors, latency, memory.

Loopback only. Closed-loop asyncio + aiohttp clients (concurrency 64 by default) post one or a few
SST-2-like texts to `/classify` for `--duration` seconds and the script prints: requests sent and
answered, answers by status, 5xx, lost requests (sent - answered: timeouts, resets), p50/p99, and
the service's RSS (summed over the `bentoml serve` process tree) at `--baseline-at` seconds
(default 60: "minute 1") and at the end, with the growth in percent. `--warmup S` first runs the
same load for S seconds, unmeasured (the service's allocators fill during the first ~60 s at
concurrency 64: a fresh smoke service grew 620 -> 875 MiB over its first 60 s, then stayed within
0.5 % over the next 90 s).

    # against a running service (give the root pid of `bentoml serve` for the RSS figures)
    .venv/bin/python benchmarks/soak.py --url http://127.0.0.1:3000 --pid <pid>
    # or start the smoke bento itself (BENTOML_HOME as in the Makefile: ./bentoml_home)
    BENTOML_HOME=bentoml_home .venv/bin/python benchmarks/soak.py --start --duration 120

Exit status 1 when a target is missed (any 5xx, any lost request, RSS growth >= --max-growth).
`--json PATH` also writes the figures as JSON, with the machine (default
benchmarks/results/soak.json; tests/integration/test_soak.py reads its own copy).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import aiohttp
import results  # benchmarks/results.py (this directory is on sys.path)
import servers  # benchmarks/servers.py
from servers import free_port, stop

TEXTS = ["a gripping, beautifully acted film", "a dull and lifeless mess",
         "the plot is thin but the jokes land", "I would not watch it again",
         "an instant classic", "two hours I will never get back",
         "it's a charming and often affecting journey", "unflinchingly bleak and desperate"]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SAMPLE_EVERY_S = 5


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes (0 once it is gone)."""
    return servers.tree_rss(pid)[0]


def start_bento(bento: str, log: Path, ready_timeout: float = 180) -> tuple[str, subprocess.Popen]:
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("bentoml")), "serve", bento,
           "--host", "127.0.0.1", "--port", str(port)]
    out = log.open("w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bentoml serve exited ({proc.returncode}); see {log}")
        with (contextlib.suppress(OSError, urllib.error.URLError),
              urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer):
            if answer.status == 200:
                return url, proc
        time.sleep(0.5)
    stop(proc)
    raise SystemExit(f"{url} not ready in {ready_timeout:.0f} s; see {log}")


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def soak(url: str, *, duration: float, concurrency: int, pid: int | None,
               baseline_at: float, timeout: float, headers: dict[str, str]) -> dict:
    statuses: collections.Counter[int] = collections.Counter()
    failures: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    sent = 0
    rss: dict[str, int | None] = {"start": tree_rss(pid) if pid else None, "baseline": None}
    series: list[tuple[int, float]] = []
    start = time.monotonic()
    end = start + duration

    async def worker(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal sent
        n = 0
        while time.monotonic() < end:
            texts = [TEXTS[(i + n + k) % len(TEXTS)] for k in range(1 + n % 3)]
            n += 1
            sent += 1
            t0 = time.perf_counter()
            try:
                async with session.post(f"{url}/classify", json={"texts": texts},
                                        headers=headers) as answer:
                    await answer.read()
                    statuses[answer.status] += 1
                    latencies.append(time.perf_counter() - t0)
            except (TimeoutError, aiohttp.ClientError) as error:
                failures[type(error).__name__] += 1  # lost: no HTTP answer

    async def sample_rss() -> None:
        """RSS every SAMPLE_EVERY_S; the first sample at or after `baseline_at` is the baseline."""
        while pid:
            await asyncio.sleep(SAMPLE_EVERY_S)
            at, value = time.monotonic() - start, tree_rss(pid)
            series.append((round(at), round(value / 2**20, 1)))
            if rss["baseline"] is None and at >= baseline_at:
                rss["baseline"] = value

    connector = aiohttp.TCPConnector(limit=concurrency)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        sampler = asyncio.create_task(sample_rss())
        await asyncio.gather(*(worker(i, session) for i in range(concurrency)))
        sampler.cancel()
    elapsed = time.monotonic() - start
    latencies.sort()
    answered = sum(statuses.values())
    end_rss = tree_rss(pid) if pid else None
    base = rss["baseline"]
    return {
        "url": url, "duration_s": round(elapsed, 1), "concurrency": concurrency,
        "sent": sent, "answered": answered, "lost": sent - answered,
        "lost_by_error": dict(failures), "by_status": {str(k): v for k, v in sorted(statuses.items())},
        "server_errors": sum(v for k, v in statuses.items() if k >= 500),
        "errors": sum(v for k, v in statuses.items() if k >= 400) + sum(failures.values()),
        "req_per_s": round(answered / elapsed, 1),
        "p50_ms": round(1000 * percentile(latencies, 0.50), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "rss_start_mib": rss["start"] and round(rss["start"] / 2**20, 1),
        "rss_baseline_at_s": baseline_at,
        "rss_baseline_mib": base and round(base / 2**20, 1),
        "rss_end_mib": end_rss and round(end_rss / 2**20, 1),
        "rss_growth_pct": round(100 * (end_rss - base) / base, 2) if base and end_rss else None,
        "rss_series_mib": series,
    }


def report(r: dict) -> None:
    print(f"soak {r['url']}: {r['duration_s']} s at concurrency {r['concurrency']}")
    print(f"  requests sent {r['sent']}, answered {r['answered']} ({r['req_per_s']} req/s), "
          f"lost {r['lost']} {r['lost_by_error'] or ''}")
    print(f"  by status {r['by_status']}; errors {r['errors']}; 5xx {r['server_errors']}")
    print(f"  latency p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms")
    if r["rss_end_mib"] is not None:
        print(f"  RSS (process tree): start {r['rss_start_mib']} MiB, at {r['rss_baseline_at_s']:.0f} s "
              f"{r['rss_baseline_mib']} MiB, end {r['rss_end_mib']} MiB, "
              f"growth {r['rss_growth_pct']} %")
        series = " ".join(f"{v:.0f}" for _, v in r["rss_series_mib"])
        print(f"  RSS every {SAMPLE_EVERY_S} s (MiB): {series}")


def result_row(r: dict) -> dict:
    """The printed figures as one table row (benchmarks/results.py)."""
    return {"c": r["concurrency"], "s": r["duration_s"], "sent": r["sent"],
            "answered": r["answered"], "lost": r["lost"], "5xx": r["server_errors"],
            "req/s": r["req_per_s"], "p50 ms": r["p50_ms"], "p99 ms": r["p99_ms"],
            f"RSS at {r['rss_baseline_at_s']:.0f} s MiB": r["rss_baseline_mib"],
            "RSS end MiB": r["rss_end_mib"], "RSS growth %": r["rss_growth_pct"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running service on loopback, e.g. http://127.0.0.1:3000")
    where.add_argument("--start", action="store_true", help="start `bentoml serve BENTO` here")
    parser.add_argument("--bento", default="tuneship-smoke:latest")
    parser.add_argument("--pid", type=int, help="root pid of the service (RSS); with --url")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds (default 120)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--baseline-at", type=float, default=60.0,
                        help="seconds into the run for the first RSS sample (default 60)")
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="seconds of the same load before the measured run (default 0)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    parser.add_argument("--max-growth", type=float, default=10.0, help="RSS growth target, %%")
    parser.add_argument("--api-key", default=os.environ.get("TUNESHIP_API_KEY"))
    parser.add_argument("--log", type=Path, default=Path("soak-serve.log"),
                        help="the started service's output (with --start)")
    results.add_args(parser, "soak")
    args = parser.parse_args(argv)
    if args.baseline_at >= args.duration:
        parser.error("--baseline-at must be shorter than --duration")
    proc = None
    if args.start:
        url, proc = start_bento(args.bento, args.log)
        pid = proc.pid
    else:
        url, pid = args.url.rstrip("/"), args.pid
        if urlparse(url).hostname not in LOOPBACK:
            parser.error(f"loopback only: {url}")
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        if args.warmup > 0:
            warm = asyncio.run(soak(url, duration=args.warmup, concurrency=args.concurrency,
                                    pid=pid, baseline_at=0, timeout=args.timeout, headers=headers))
            print(f"warm-up: {warm['answered']} answered in {warm['duration_s']} s, RSS "
                  f"{warm['rss_start_mib']} -> {warm['rss_end_mib']} MiB (not measured)")
        result = asyncio.run(soak(url, duration=args.duration, concurrency=args.concurrency,
                                  pid=pid, baseline_at=args.baseline_at, timeout=args.timeout,
                                  headers=headers))
    finally:
        if proc is not None:
            stop(proc)
    report(result)
    where = results.write("soak", [result_row(result)],
                          {"note": args.note, "warmup_s": args.warmup, **result}, args.json)
    print(f"wrote {where}")
    growth = result["rss_growth_pct"]
    ok = (result["server_errors"] == 0 and result["lost"] == 0
          and (growth is None or growth < args.max_growth))
    print("targets (0 5xx, 0 lost, RSS growth < "
          f"{args.max_growth:g} %): {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
