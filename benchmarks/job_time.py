"""A fine-tuning job from create to the first answer of its model, and the jobs API's latency
while it trains, against a running platform service (official `openai` client).

    make bento experiment=shakespeare_lora
    TUNESHIP_API_KEY=sk-local make serve-platform experiment=shakespeare_lora &
    .venv/bin/python benchmarks/job_time.py --url http://127.0.0.1:3000/v1 --key sk-local

Uploads `--file` (the README's 48-chat example), creates a `--model` job for `--epochs`, then
until it ends calls retrieve and list (`limit=20`) in turn, and every fifth round creates a job
and cancels it at once, timing each call; waits for
`fine_tuned_model` in `models.list()` and asks it one chat completion. The job's own events
give the stage times. JSON: benchmarks/results/job_time.json.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

import openai
import results  # benchmarks/results.py

ROOT = Path(__file__).resolve().parents[1]
FINAL = ("succeeded", "failed", "cancelled")


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def stage_times(events: list[str]) -> dict[str, float]:
    """`Stage <name>: done in <s> s` events → {name: seconds}."""
    found = {}
    for message in events:
        m = re.search(r"Stage (\w+): done in ([0-9.]+) s", message)
        if m:
            found[m[1]] = float(m[2])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000/v1")
    parser.add_argument("--key", required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--file", type=Path, default=ROOT / "tests" / "fixtures" / "pirate.jsonl")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800)
    results.add_args(parser, "job_time")
    args = parser.parse_args()
    c = openai.OpenAI(base_url=args.url, api_key=args.key, max_retries=0, timeout=60)

    f = c.files.create(file=args.file.open("rb"), purpose="fine-tune")
    created = time.monotonic()
    job = c.fine_tuning.jobs.create(model=args.model, training_file=f.id, suffix="timing",
                                    method={"type": "supervised", "supervised": {
                                        "hyperparameters": {"n_epochs": args.epochs}}})
    create_ms = (time.monotonic() - created) * 1000
    retrieve_ms, list_ms, create_busy_ms = [], [], []
    while True:
        t = time.monotonic()
        job = c.fine_tuning.jobs.retrieve(job.id)
        retrieve_ms.append((time.monotonic() - t) * 1000)
        if job.status in FINAL:
            break
        t = time.monotonic()
        c.fine_tuning.jobs.list(limit=20)
        list_ms.append((time.monotonic() - t) * 1000)
        if len(list_ms) % 5 == 0 and job.status == "running":
            t = time.monotonic()
            extra = c.fine_tuning.jobs.create(model=args.model, training_file=f.id)
            create_busy_ms.append((time.monotonic() - t) * 1000)
            c.fine_tuning.jobs.cancel(extra.id)
        if time.monotonic() - created > args.timeout:
            raise SystemExit(f"{job.id} still {job.status} after {args.timeout:.0f} s")
        time.sleep(0.2)
    succeeded = time.monotonic()
    if job.status != "succeeded":
        raise SystemExit(f"{job.id} {job.status}: {job.error}")
    model = job.fine_tuned_model
    while model not in {m.id for m in c.models.list()}:
        if time.monotonic() - succeeded > 120:
            raise SystemExit(f"{model} not listed 120 s after the job succeeded")
        time.sleep(0.2)
    listed = time.monotonic()
    answer = c.chat.completions.create(model=model, max_tokens=40, temperature=0,
                                       messages=[{"role": "user", "content": "Hello"}])
    answered = time.monotonic()
    events = [e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=200)]
    stages = stage_times(events)
    rows = [{"what": "create → succeeded", "seconds": round(succeeded - created, 1)},
            {"what": "succeeded → listed by models.list()", "seconds": round(listed - succeeded, 1)},
            {"what": "create → first chat answer (40 tokens)",
             "seconds": round(answered - created, 1)},
            *({"what": f"stage {name}", "seconds": s} for name, s in stages.items())]
    latency = [{"call": name, "calls": len(v), "p50 ms": round(statistics.median(v), 1),
                "p99 ms": round(p(v, 0.99), 1), "max ms": round(max(v), 1)}
               for name, v in (("retrieve", retrieve_ms), ("list (limit 20)", list_ms),
                               ("create (then cancel)", create_busy_ms)) if v]
    for row in rows:
        print(f"{row['what']:<45} {row['seconds']:>8.1f} s")
    print(f"first create {create_ms:.0f} ms")
    for row in latency:
        print(f"{row['call']:<22} n={row['calls']:<5} p50 {row['p50 ms']:.1f} ms  "
              f"p99 {row['p99 ms']:.1f} ms  max {row['max ms']:.1f} ms")
    print(f"answer: {answer.choices[0].message.content!r}")
    path = results.write("job_time", rows, {
        "tables": {"latency": latency}, "job": job.id, "fine_tuned_model": model,
        "create_ms": round(create_ms, 1), "note": args.note, "formats": {}}, args.json)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
