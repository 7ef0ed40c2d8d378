"""Memory of the LLM service serving 1 vs N LoRA adapters of one base, in one run.

    make bento experiment=shakespeare_lora
    BENTOML_HOME=bentoml_home .venv/bin/python benchmarks/adapter_memory.py \
        --model tuneship-shakespeare_lora --adapters 1 4

One `bentoml serve` of the bento per variant (its base model and registered champion adapter),
plus `N - 1` more adapters shaped like the champion's (same LoRA config, random non-zero
weights, written to a temporary folder and added with TUNESHIP_LLM_ADAPTERS). Per variant: the
process tree's RSS when ready, and its peak while every adapter answers at once (one request per
adapter, greedy, `--max-tokens` new tokens: they share decode steps). The ratio to the first
variant is the cost of the extra adapters. JSON: benchmarks/results/adapter_memory.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import results  # benchmarks/results.py
from generate_load import serving  # benchmarks/generate_load.py
from serve_load import bento_command
from servers import free_port, tree_rss

GiB = 2**30


def adapter_folders(base_folder: Path, template: Path, count: int, into: Path) -> list[Path]:
    """`count` random LoRA adapters with the config of the adapter in `template`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = json.loads((template / "adapter_config.json").read_text())
    keep = {k: config[k] for k in ("r", "lora_alpha", "target_modules", "lora_dropout")
            if k in config}
    folders = []
    for i in range(count):
        base = AutoModelForCausalLM.from_pretrained(base_folder)
        torch.manual_seed(100 + i)
        peft = get_peft_model(base, LoraConfig(**keep, init_lora_weights=False))
        folder = into / f"extra{i}"
        peft.save_pretrained(folder)
        folders.append(folder)
    return folders


def bento_files(url: str, home: Path) -> tuple[Path, Path, str]:
    """The served base weights folder, the champion adapter folder and its served id."""
    import yaml

    card = httpx.get(f"{url}/model", timeout=30).json()

    def stored(tag: str) -> tuple[Path, dict]:
        name, version = tag.split(":")
        root = home / "models" / name / version
        return root, yaml.safe_load((root / "model.yaml").read_text())["metadata"]

    base_root, base_meta = stored(card["base"]["bento_model"])
    root, meta = stored(card["bento_model"])
    return (base_root / base_meta["transformers"]["model"], root / meta["transformers"]["adapter"],
            card["name"])


async def ask_all(url: str, models: list[str], max_tokens: int) -> int:
    import openai

    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                                  timeout=600) as api:
        answers = await asyncio.gather(*(api.completions.create(
            model=m, prompt="ROMEO:\nBut soft, what light", max_tokens=max_tokens,
            temperature=0) for m in models))
    return sum(a.usage.completion_tokens for a in answers)


def measure(bento: str, extra: list[Path], champion: str, args: argparse.Namespace,
            log: Path) -> dict:
    env = {"TUNESHIP_LLM_ADAPTERS": ",".join(f"{p.name}={p}" for p in extra)}
    port = free_port()
    with serving(bento_command(bento, port), env, port, log, "/readyz",
                 args.ready_timeout) as (url, proc, ready_s):
        time.sleep(2)
        ready_rss = tree_rss(proc.pid)[0]
        peak, done = [ready_rss], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss(proc.pid)[0])
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        tokens = asyncio.run(ask_all(url, [champion, *(p.name for p in extra)], args.max_tokens))
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    return {"adapters": 1 + len(extra), "ready_gib": ready_rss / GiB, "peak_gib": peak[0] / GiB,
            "tokens": tokens, "seconds": seconds, "ready_s": ready_s}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tuneship-shakespeare_lora")
    parser.add_argument("--bento", help="bento tag (default: <model>:latest)")
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--ready-timeout", type=float, default=240.0)
    results.add_args(parser, "adapter_memory")
    args = parser.parse_args(argv)
    bento = args.bento or f"{args.model}:latest"
    import os

    home = Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        with serving(bento_command(bento, port), {}, port, Path(tmp) / "probe.log", "/readyz",
                     args.ready_timeout) as (url, _, _):
            base_folder, template, champion = bento_files(url, home)
        folders = adapter_folders(base_folder, template, max(args.adapters) - 1, Path(tmp))
        for count in args.adapters:
            row = measure(bento, folders[:count - 1], champion, args,
                          Path(tmp) / f"serve{count}.log")
            rows.append(row)
            print(f"{count} adapter(s): ready {row['ready_gib']:.3f} GiB, peak "
                  f"{row['peak_gib']:.3f} GiB", file=sys.stderr)
    first = rows[0]
    table = [{"Adapters served": r["adapters"], "RSS ready (GiB)": r["ready_gib"],
              "RSS peak, all answering (GiB)": r["peak_gib"],
              "Peak vs 1 adapter": r["peak_gib"] / first["peak_gib"],
              "Ready vs 1 adapter": r["ready_gib"] / first["ready_gib"]} for r in rows]
    header = list(table[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in table:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v)
                                for v in r.values()) + " |")
    path = results.write("adapter_memory", table, {
        "formats": {k: "{:.3f}" for k in header[1:]}, "note": args.note, "raw": rows,
        "bento": bento})
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
