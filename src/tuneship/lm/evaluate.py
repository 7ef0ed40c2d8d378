"""The causal-LM evaluate stage: held-out perplexity of the base AND the fine-tuned model.

Both are scored in the same run on the same test blocks (the adapter switched off, then on), so
`perplexity_reduction = 1 - test_perplexity / base_perplexity` compares like with like. Perplexity
comes from the in-repo `perplexity` metric fed with summed token NLLs; a bootstrap over test
blocks gives its interval. Instruction data is also scored with ROUGE-L and BLEU on generated
responses. Sample generations of both models are written to `eval/samples.jsonl`.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import mlflow
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tuneship.config import EvalConfig, RegistryConfig, section
from tuneship.data.columns import column
from tuneship.data.preprocess import load_prepared
from tuneship.errors import TuneshipError
from tuneship.lm.data import IGNORE
from tuneship.lm.model import load_finetuned
from tuneship.lm.train import CausalLMCollator
from tuneship.metrics import load_metric
from tuneship.registry.tracking import stage_run
from tuneship.train.device import pick_device

REPORT_FILE = "report.json"
SAMPLES_FILE = "samples.jsonl"
KNOWN = ("perplexity", "rouge", "bleu")


def run(cfg: DictConfig) -> dict:
    """Score base and fine-tuned model on the test split; log metrics and samples."""
    ev = section(cfg, "eval", EvalConfig)
    reg = section(cfg, "registry", RegistryConfig)
    unknown = set(ev.metrics) - set(KNOWN)
    if unknown:
        raise TuneshipError(f"eval.metrics {sorted(unknown)} do not apply to the causal_lm task; "
                            f"choose from {list(KNOWN)}")
    work_dir = Path(cfg.paths.work_dir)
    prepared = load_prepared(work_dir / "data")
    model, tokenizer, ref = load_finetuned(work_dir / "model")
    model.to(pick_device("auto"))
    test = prepared.splits["test"]
    with model.disable_adapter():
        base_nll, counts = block_nll(model, tokenizer, test, ev.batch_size)
    tuned_nll, _ = block_nll(model, tokenizer, test, ev.batch_size)
    base, tuned = perplexity(base_nll, counts), perplexity(tuned_nll, counts)
    metrics = {"perplexity": tuned, "base_perplexity": base,
               "perplexity_reduction": 1 - tuned / base}
    low, high = bootstrap_perplexity(tuned_nll, counts, ev.bootstrap_samples, ev.confidence,
                                     cfg.seed)
    out_dir = work_dir / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = generation_report(model, tokenizer, test, ev, metrics, prepared.stats["kind"])
    with (out_dir / SAMPLES_FILE).open("w") as handle:
        handle.writelines(json.dumps(s) + "\n" for s in samples)
    if ev.headline not in metrics:
        raise TuneshipError(f"eval.headline={ev.headline} is not among the computed metrics "
                            f"{sorted(metrics)}")
    result = {"metrics": metrics, "headline": ev.headline, "interval": [low, high],
              "confidence": ev.confidence, "rows": len(test), "tokens": int(counts.sum()),
              "data_fingerprint": prepared.stats["fingerprint"], "base_model": ref.name}
    (out_dir / REPORT_FILE).write_text(json.dumps(result, indent=2))
    with stage_run(reg, work_dir, "evaluate"):
        mlflow.log_metrics({_logged_name(k): v for k, v in metrics.items()})
        mlflow.log_metrics({"test_perplexity_ci_low": low, "test_perplexity_ci_high": high})
        mlflow.log_artifacts(str(out_dir), artifact_path="eval")
    return result


def _logged_name(key: str) -> str:
    """test_perplexity, base_perplexity, perplexity_reduction, test_rougeL, base_rougeL, ..."""
    return key if key.startswith(("base_", "perplexity_reduction")) else f"test_{key}"


@torch.inference_mode()
def block_nll(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
              split: datasets.Dataset, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Summed next-token NLL (nats) and the number of predicted tokens, per row of `split`."""
    model.eval()
    device = next(model.parameters()).device
    columns = [c for c in ("input_ids", "labels") if c in split.column_names]
    loader = DataLoader(split.select_columns(columns), batch_size=batch_size,
                        collate_fn=CausalLMCollator(tokenizer.pad_token_id))
    sums, counts = [], []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        targets = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets,
                                                ignore_index=IGNORE, reduction="none")
        sums.append(nll.sum(dim=1).cpu())
        counts.append((targets != IGNORE).sum(dim=1).cpu())
    return torch.cat(sums).double().numpy(), torch.cat(counts).numpy()


def perplexity(nll_sums: np.ndarray, counts: np.ndarray) -> float:
    """Token-weighted perplexity through the in-repo `evaluate` module."""
    metric = load_metric("perplexity")
    return float(metric.compute(predictions=nll_sums.tolist(), references=counts.tolist(),
                                reduction="sum")["perplexity"])


def bootstrap_perplexity(nll_sums: np.ndarray, counts: np.ndarray, samples: int,
                         confidence: float, seed: int) -> tuple[float, float]:
    """Percentile interval of the corpus perplexity over test rows drawn with replacement."""
    if samples == 0 or len(counts) < 2:
        return (float("nan"), float("nan"))
    idx = np.random.default_rng(seed).integers(0, len(counts), size=(samples, len(counts)))
    values = np.exp(nll_sums[idx].sum(axis=1) / np.maximum(counts[idx].sum(axis=1), 1))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def generation_report(model, tokenizer: PreTrainedTokenizerBase, test: datasets.Dataset,
                      ev: EvalConfig, metrics: dict, kind: str) -> list[dict]:
    """Sample generations of both models; for instruction data also ROUGE-L/BLEU (added to
    `metrics` as rougeL/bleu and base_rougeL/base_bleu) over up to `eval.generate_rows` rows."""
    if kind == "instructions":
        rows = min(len(test), ev.generate_rows if {"rouge", "bleu"} & set(ev.metrics)
                   else ev.samples)
        prompts = column(test, "prompt")[:rows]
        refs = column(test, "response")[:rows]
        chat = [_chat_prompt(tokenizer, p) for p in prompts]
    else:
        rows, refs = min(len(test), ev.samples), None
        head = max(1, min(32, len(test[0]["input_ids"]) // 2))
        chat = [ids[:head] for ids in column(test, "input_ids")[:rows]]
        prompts = [tokenizer.decode(ids) for ids in chat]
    with model.disable_adapter():
        base_out = generate(model, tokenizer, chat, ev.max_new_tokens)
    tuned_out = generate(model, tokenizer, chat, ev.max_new_tokens)
    if refs is not None:
        for prefix, outputs in (("", tuned_out), ("base_", base_out)):
            if "rouge" in ev.metrics:
                rouge = load_metric("rouge").compute(predictions=outputs, references=refs,
                                                     rouge_types=["rougeL"])
                metrics[f"{prefix}rougeL"] = float(rouge["rougeL"])
            if "bleu" in ev.metrics:
                bleu = load_metric("bleu").compute(predictions=outputs, references=refs)
                metrics[f"{prefix}bleu"] = float(bleu["bleu"])
    records = [{"prompt": p, "base": b, "fine_tuned": t, **({"reference": r} if refs else {})}
               for p, b, t, r in zip(prompts, base_out, tuned_out, refs or [None] * rows,
                                     strict=True)]
    return records[:ev.samples]


def _chat_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    out = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                        add_generation_prompt=True, return_dict=True)
    return list(out["input_ids"])


@torch.inference_mode()
def generate(model, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
             max_new_tokens: int) -> list[str]:
    """Greedy continuations (deterministic), one prompt at a time (no padding effects)."""
    device = next(model.parameters()).device
    texts = []
    for ids in prompts:
        inputs = torch.tensor([ids], device=device)
        out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             repetition_penalty=1.1, pad_token_id=tokenizer.pad_token_id)
        texts.append(tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip())
    return texts
