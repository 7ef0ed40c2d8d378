"""Texts/s of each classifier runtime the optimize stage builds, against eager fp32, in one run.

    python benchmarks/runtimes.py                                  # tuneship-sst2_minilm@champion
    python benchmarks/runtimes.py --model models:/tuneship-sst2_minilm/3
    python benchmarks/runtimes.py --path outputs/sst2_minilm/model # a saved classifier folder

The runtimes are built here by the stage's own builders (src/tuneship/tasks/classification/
runtimes.py) and scored on the GLUE SST-2 dev set (`--data`) against eager fp32 with the stage's
gate (`conf/optimize/default.yaml`). Timing covers the forward pass only (texts tokenized
beforehand, the same for every runtime): batch 1 over the first `--texts` texts, batch 32 over
consecutive texts padded to the longest of each batch. Rounds alternate between runtimes and
the median round counts, so load from other jobs spreads over all of them. Prints a table and
writes it with the CPU's flags to benchmarks/results/runtimes.json (`make figures`: README).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import results  # benchmarks/results.py (this directory is on sys.path)
import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tuneship.config import OptimizeGateConfig
from tuneship.data.load import load_raw
from tuneship.optimize import gate
from tuneship.settings import project_root
from tuneship.tasks.classification import runtimes

CANDIDATES = ("onnx-fp32", "onnx-int8", "torch-bf16", "torch-int8")
REFERENCE = "torch-fp32"


def load(args: argparse.Namespace) -> tuple[torch.nn.Module, object, str]:
    """The classifier and its tokenizer: a saved folder, else a registered version."""
    if args.path:
        return (AutoModelForSequenceClassification.from_pretrained(args.path),
                AutoTokenizer.from_pretrained(args.path), str(args.path))
    mlflow.set_tracking_uri(args.tracking_uri)
    parts = mlflow.transformers.load_model(args.model, return_type="components")
    return parts["model"], parts["tokenizer"], args.model


def encode(tokenizer, names: list[str], texts: list[str], size: int) -> list[dict[str, np.ndarray]]:
    """Consecutive batches of `size` texts, each padded to its longest, as int64 arrays."""
    out = []
    for start in range(0, len(texts) - size + 1, size):
        enc = tokenizer(texts[start:start + size], padding=True, truncation=True, max_length=64,
                        return_tensors="np")
        out.append({name: enc[name].astype(np.int64) for name in names})
    return out


def rate(runner, batches: list[dict[str, np.ndarray]]) -> float:
    """Texts per second of one pass over `batches` (after one warm-up batch)."""
    runner(batches[0])
    start = time.perf_counter()
    for batch in batches:
        runner(batch)
    return sum(len(b["input_ids"]) for b in batches) / (time.perf_counter() - start)


def measure(runners: dict, tokenizer, names: list[str], texts: list[str], n: int,
            rounds: int) -> dict[str, dict[int, float]]:
    """Median texts/s per runtime at batch 1 and 32, rounds alternating between runtimes."""
    batches = {1: encode(tokenizer, names, texts[:n], 1), 32: encode(tokenizer, names, texts, 32)}
    seen: dict[str, dict[int, list[float]]] = {name: {1: [], 32: []} for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            for size, data in batches.items():
                seen[name][size].append(rate(runner, data))
    return {name: {size: statistics.median(v) for size, v in sizes.items()}
            for name, sizes in seen.items()}


def rows_of(speeds: dict, parity: dict, reasons: dict) -> list[dict]:
    base = speeds[REFERENCE]
    rows = []
    for name, speed in speeds.items():
        figures = parity.get(name, {})
        rows.append({"runtime": name, "parity": "reference" if name == REFERENCE else
                     ("passed" if reasons.get(name) is None else f"failed: {reasons[name]}"),
                     "accuracy Δ (pt)": 100 * figures.get("accuracy_delta", 0.0),
                     "agreement": figures.get("agreement", 1.0),
                     "batch 1 texts/s": round(speed[1], 1), "× fp32 (1)": round(speed[1] / base[1], 2),
                     "batch 32 texts/s": round(speed[32], 1),
                     "× fp32 (32)": round(speed[32] / base[32], 2)})
    return rows


def print_table(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column, justify="left" if column in ("runtime", "parity") else "right")
    for row in rows:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) and k in ("accuracy Δ (pt)", "agreement")
                        else str(v) for k, v in row.items()))
    Console().print(table)


def best(rows: list[dict]) -> dict | None:
    """The parity-passed runtime fastest at batch 1 (ties: at batch 32)."""
    passed = [r for r in rows if r["parity"] == "passed"]
    return max(passed, key=lambda r: (r["× fp32 (1)"], r["× fp32 (32)"]), default=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/tuneship-sst2_minilm@champion")
    parser.add_argument("--path", type=Path, help="a saved classifier folder instead of --model")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{project_root() / 'mlflow.db'}")
    parser.add_argument("--data", default=str(project_root().parent / "shared/data/sst2/dev.tsv"))
    parser.add_argument("--texts", type=int, default=256, help="texts timed at batch 1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: all usable cores")
    results.add_args(parser, "runtimes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or len(__import__("os").sched_getaffinity(0)))
    model, tokenizer, source = load(args)
    ds = load_raw(args.data, None, None)
    texts, labels = list(ds["sentence"]), np.asarray(ds["label"])
    suite = runtimes.ClassifierRuntimes(model, tokenizer, texts, labels, 64, 64)
    rules = OptimizeGateConfig()
    runners, parity, reasons = {REFERENCE: runtimes.TorchRunner(suite.model)}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in CANDIDATES:
            candidate = suite.build(name, Path(tmp) / name)
            runners[name], parity[name] = candidate.runner, suite.parity(candidate)
            reasons[name] = gate.judge(rules, parity[name])
        names = runtimes.model_inputs(suite.model, tokenizer)
        speeds = measure(runners, tokenizer, names, texts, args.texts, args.rounds)
    rows = rows_of(speeds, parity, reasons)
    top = best(rows)
    threads = f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}"
    notes = [f"Model: `{source}`; parity on {len(texts)} texts of `{Path(args.data).name}` "
             f"against eager fp32 (gate: accuracy drop ≤ {100 * rules.max_accuracy_drop:g} pt, "
             f"agreement ≥ {rules.min_agreement:g}); {threads}; "
             f"forward pass only, median of {args.rounds} alternating rounds."]
    if top:
        notes.append(f"Fastest parity-passed runtime: **{top['runtime']}**, {top['× fp32 (1)']:.2f}× "
                     f"eager fp32 at batch 1 (target 2×) and {top['× fp32 (32)']:.2f}× at batch 32 "
                     f"(target 1.5×).")
    print_table(rows, f"{source} — {threads}")
    print("\n".join(notes))
    where = results.write("runtimes", rows, {
        "formats": {"accuracy Δ (pt)": "{:+.2f}", "agreement": "{:.4f}", "batch 1 texts/s": "{:.1f}",
                    "× fp32 (1)": "{:.2f}×", "batch 32 texts/s": "{:.1f}", "× fp32 (32)": "{:.2f}×"},
        "notes": notes, "note": args.note, "model": source, "threads": torch.get_num_threads(),
        "texts": len(texts), "rounds": args.rounds}, args.json)
    print(f"\nwrote {where}")


if __name__ == "__main__":
    main()
