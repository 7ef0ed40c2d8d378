"""The LLM engine's decode speed and perplexity per weight precision, in one run.

    python benchmarks/llm_dtype.py --base-dir .cache/models/SmolLM2-135M-Instruct.Q4_1/model

Variants (each one `bentos/engine.py` Engine over the same base model folder):
  float32     fp32 weights in the layout the service picks (`engine.choose_layout`, timed)
  bfloat16    bf16 weights (the engine's `dtype`), the layout as the engine picks it
  bfloat16-T  bf16 weights stored transposed too (`cpu_weight_layout=True`)
  int8        int8 weight-only linear layers (`bentos/int8_weights.py`, what `llm_dtype: int8`
              serves), float32 activations around a bf16 product
  int8-dyn    torch's dynamic int8 linear layers (`torch.ao.quantization.quantize_dynamic`,
              int8 activations too; `--no-int8` skips both int8 variants)
Decode tokens/s at each batch size: rows x 1 / the median decode-step time (the engine's
inter-token callback), `--new-tokens` greedy tokens per row after a `--prompt-tokens` prompt,
variants interleaved over `--reps` rounds so a busy spell on a shared machine falls on all.
Perplexity: the task's own scoring (`tuneship.tasks.causal_lm.scoring`) on `--blocks` blocks of
128 tokens from the end of Tiny Shakespeare. Writes benchmarks/results/llm_dtype.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import datasets
import results  # benchmarks/results.py
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneship.tasks.causal_lm.scoring import block_nll, perplexity

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bentos"))
from engine import (  # noqa: E402  (bentos/engine.py)
    Engine,
    Observer,
    Request,
    SamplingParams,
    choose_layout,
)
from int8_weights import quantize_int8  # noqa: E402

SHAKESPEARE = (Path(os.environ.get("TUNESHIP_DATA_DIR", ROOT.parent / "shared" / "data"))
               / "tiny_shakespeare" / "train.txt")
BLOCK = 128


class StepTimes(Observer):
    """Collects the engine's decode-step times (one inter-token call per row per step)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def inter_token(self, model: str, seconds: float) -> None:
        self.seconds.append(seconds)


def build(variant: str, base_dir: Path, tokenizer, threads: int) -> tuple[Engine, StepTimes]:
    """The engine of one variant (its own copy of the model) and its step-time recorder."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    kwargs: dict = {}
    if variant == "float32":
        kwargs["cpu_weight_layout"] = choose_layout(model)[0] == "transposed"
    elif variant.startswith("bfloat16"):
        kwargs["dtype"] = torch.bfloat16
        kwargs["cpu_weight_layout"] = variant == "bfloat16-T" or None
    elif variant == "int8":
        quantize_int8(model)
    elif variant == "int8-dyn":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                       dtype=torch.qint8)
    times = StepTimes()
    engine = Engine(model, tokenizer, threads=threads, max_batch=64, kv_budget_tokens=65536,
                    observer=times, **kwargs)
    return engine, times


def decode_step_ms(engine: Engine, times: StepTimes, prompts: list[list[int]],
                   new_tokens: int) -> float:
    """Median decode-step milliseconds with `len(prompts)` rows decoded together."""
    times.seconds.clear()

    async def run() -> None:
        streams = [engine.submit(Request(p, SamplingParams(max_tokens=new_tokens,
                                                           ignore_eos=True))) for p in prompts]
        await asyncio.gather(*(s.collect() for s in streams))

    asyncio.run(run())
    return statistics.median(times.seconds) * 1000


def heldout_blocks(tokenizer, blocks: int) -> datasets.Dataset:
    """`blocks` blocks of 128 tokens from the end of Tiny Shakespeare."""
    text = SHAKESPEARE.read_text(encoding="utf-8")[-blocks * BLOCK * 6:]
    ids = tokenizer(text)["input_ids"][-blocks * BLOCK:]
    return datasets.Dataset.from_dict(
        {"input_ids": [ids[i:i + BLOCK] for i in range(0, len(ids) - BLOCK + 1, BLOCK)]})


def prompts_of(tokenizer, tokens: int, rows: int) -> list[list[int]]:
    """`rows` different prompts of exactly `tokens` tokens (Tiny Shakespeare)."""
    ids = tokenizer(SHAKESPEARE.read_text(encoding="utf-8")[:200_000])["input_ids"]
    return [ids[i * tokens:(i + 1) * tokens] for i in range(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", type=Path, required=True,
                        help="a transformers causal-LM folder (weights and tokenizer)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=24, help="perplexity blocks of 128 tokens")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-int8", action="store_true")
    results.add_args(parser, "llm_dtype")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.base_dir)
    variants = ["float32", "bfloat16", "bfloat16-T"] + ([] if args.no_int8 else
                                                         ["int8", "int8-dyn"])
    engines = {v: build(v, args.base_dir, tokenizer, args.threads) for v in variants}
    prompts = prompts_of(tokenizer, args.prompt_tokens, max(args.batch))
    samples: dict[str, dict[int, list[float]]] = {v: {b: [] for b in args.batch} for v in variants}
    started = time.perf_counter()
    for engine, times in engines.values():  # warm-up
        decode_step_ms(engine, times, prompts[:2], 4)
    for _ in range(args.reps):
        for b in args.batch:
            for v, (engine, times) in engines.items():
                samples[v][b].append(decode_step_ms(engine, times, prompts[:b], args.new_tokens))
    timing_s = time.perf_counter() - started
    split = heldout_blocks(tokenizer, args.blocks)
    ppl = {}
    torch.set_num_threads(args.threads)
    for v, (engine, _) in engines.items():
        sums, counts = block_nll(engine.model, tokenizer, split, batch_size=8)
        ppl[v] = perplexity(sums, counts)
        engine.close()
    step = {v: {b: statistics.median(s) for b, s in by.items()} for v, by in samples.items()}
    rows = []
    for v in variants:
        row: dict = {"dtype": v}
        for b in args.batch:
            row[f"batch {b} tokens/s"] = round(b * 1000 / step[v][b], 1)
            row[f"batch {b} vs fp32"] = round(step["float32"][b] / step[v][b], 2)
        row["perplexity"] = round(ppl[v], 3)
        row["perplexity vs fp32"] = round(ppl[v] / ppl["float32"], 4)
        rows.append(row)
    columns = list(rows[0])
    print(f"{args.base_dir}: {args.prompt_tokens}-token prompts, {args.new_tokens} new tokens, "
          f"{args.threads} threads, median of {args.reps} interleaved reps ({timing_s:.0f} s); "
          f"perplexity on {len(split)} x {BLOCK} held-out tokens; load average "
          f"{os.getloadavg()[0]:.2f}\n")
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    formats = {c: "{:.2f}×" for c in columns if c.startswith("batch") and "vs" in c}
    formats["perplexity vs fp32"] = "{:.4f}"
    where = results.write("llm_dtype", rows, {
        "formats": formats, "note": args.note, "threads": args.threads,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "reps": args.reps,
        "step_ms": {v: {str(b): s for b, s in by.items()} for v, by in samples.items()},
        "perplexity_tokens": len(split) * (BLOCK - 1),
    }, args.json)
    print(f"\nwrote {where}")


if __name__ == "__main__":
    main()
