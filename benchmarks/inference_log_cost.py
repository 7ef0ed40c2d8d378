"""What recording costs per request: the inference table's middleware and writer, in process.

    .venv/bin/python benchmarks/inference_log_cost.py              # 5,000 requests per variant
    .venv/bin/python benchmarks/inference_log_cost.py --requests 20000

Drives a minimal Starlette `/classify` app (one SST-2 sentence per request, the service's answer
shape) straight through ASGI, without and with `InferenceLog` (bentos/inference_log.py), and
then times the writer turning the queued copies into Parquet rows in each privacy mode. The
request-path figure is what a served request pays; the writer's runs on its own thread in the
public service's process (not the classifier's, where the model runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bentos"))
import inference_log  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

MODEL = {"name": "tuneship-sst2_minilm", "version": "1", "alias": "champion", "bento_model": "x"}


async def classify(request: Request) -> JSONResponse:
    texts = (await request.json())["texts"]
    return JSONResponse({"predictions": [{"label": "positive", "score": 0.9, "scores": None}
                                         for _ in texts], "model": MODEL})


def sentences() -> list[str]:
    path = ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
    return [line.split("\t")[0] for line in path.read_text().splitlines()[1:]]


async def drive(app, bodies: list[bytes]) -> float:
    """Seconds per request, sequentially through the ASGI app."""
    scope = {"type": "http", "method": "POST", "path": "/classify", "query_string": b"",
             "headers": [(b"content-type", b"application/json")], "http_version": "1.1",
             "scheme": "http", "server": ("b", 80), "client": ("c", 1), "root_path": ""}

    async def send(message) -> None:
        pass

    start = time.perf_counter()
    for body in bodies:
        sent = False

        async def receive(body=body):
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(dict(scope), receive, send)
    return (time.perf_counter() - start) / len(bodies)


def writer_cost(mode: str, bodies: list[bytes], directory: Path) -> float:
    """Seconds of writer time per row (parse, privacy, Parquet) in `mode`."""
    writer = inference_log.Writer(directory / mode, inference_log.PrivacyMode(mode), 30,
                                  len(bodies) + 1, len(bodies) + 1, 3600, MODEL)
    answer = json.dumps({"predictions": [{"label": "positive", "score": 0.9}], "model": MODEL})
    records = []
    for i, body in enumerate(bodies):
        record = inference_log.Captured(str(i), "/classify", time.time(), status=200,
                                        content_type="application/json")
        record.body += body
        record.answer += answer.encode()
        records.append(record)
    start = time.perf_counter()
    writer._flush({"requests": records, "feedback": []})
    return (time.perf_counter() - start) / len(bodies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    texts = sentences()
    bodies = [json.dumps({"texts": [texts[i % len(texts)]]}).encode()
              for i in range(args.requests)]
    app = Starlette(routes=[Route("/classify", classify, methods=["POST"])])
    with tempfile.TemporaryDirectory() as tmp:
        recorder = inference_log.InferenceLog(app, directory=tmp, buffer_size=4 * args.requests,
                                              flush_interval_s=3600, flush_rows=10**9)
        writer_cost("full", bodies[:200], Path(tmp) / "warm-up")  # imports pyarrow
        asyncio.run(drive(recorder, bodies[:200]))
        rounds = [(asyncio.run(drive(app, bodies)), asyncio.run(drive(recorder, bodies)))
                  for _ in range(3)]  # alternated: load from other jobs falls on both alike
        off, on = min(r[0] for r in rounds), min(r[1] for r in rounds)
        print("| what | µs per request |\n|---|---:|")
        print(f"| app alone | {off * 1e6:.1f} |\n| app + InferenceLog (request path) | "
              f"{on * 1e6:.1f} |\n| added on the request path | {(on - off) * 1e6:.1f} |")
        for mode in ("full", "redacted", "stats-only"):
            cost = writer_cost(mode, bodies, Path(tmp))
            print(f"| writer, {mode} (own thread) | {cost * 1e6:.1f} |")


if __name__ == "__main__":
    main()
