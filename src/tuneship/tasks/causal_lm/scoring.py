"""Causal-LM scoring: summed token NLLs per test row (perplexity), greedy generations, and
ROUGE-L / BLEU of generated responses for instruction data."""

from __future__ import annotations

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tuneship import metrics as reference
from tuneship.config import EvalConfig
from tuneship.data.columns import column
from tuneship.tasks.causal_lm.data import IGNORE

KNOWN = ("perplexity", "rouge", "bleu")


class CausalLMCollator:
    """Right-pads a batch; labels default to the input ids (corpus blocks); padding is -100.

    Unlike `DataCollatorForLanguageModeling`, labels equal to the pad id are kept: SmolLM2 pads
    with its end-of-turn token, which an instruction-tuned model must learn to emit.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad_id, self.multiple = pad_token_id, pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        width = -(-longest // self.multiple) * self.multiple if len(rows) > 1 else longest
        ids, mask, labels = [], [], []
        for row in rows:
            n, pad = len(row["input_ids"]), width - len(row["input_ids"])
            ids.append(list(row["input_ids"]) + [self.pad_id] * pad)
            mask.append([1] * n + [0] * pad)
            labels.append(list(row.get("labels") or row["input_ids"]) + [IGNORE] * pad)
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
                "labels": torch.tensor(labels)}


def logged_name(key: str) -> str:
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
    """Token-weighted perplexity of rows given their summed NLLs and predicted-token counts."""
    return reference.perplexity(nll_sums, counts)


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
        base_out = generate(model, tokenizer, chat, ev.max_new_tokens, ev.batch_size)
    tuned_out = generate(model, tokenizer, chat, ev.max_new_tokens, ev.batch_size)
    if refs is not None:
        for prefix, outputs in (("", tuned_out), ("base_", base_out)):
            if "rouge" in ev.metrics:
                metrics[f"{prefix}rougeL"] = reference.rouge_l(outputs, refs)
            if "bleu" in ev.metrics:
                metrics[f"{prefix}bleu"] = reference.bleu(outputs, refs)
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
             max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy continuations (deterministic), `batch_size` prompts per `generate` call.

    Prompts are left-padded and masked, so each row continues from its own last token; the
    model's position ids follow the attention mask.
    """
    device = next(model.parameters()).device
    texts = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(len(ids) for ids in chunk)
        inputs = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(inputs)
        for row, ids in enumerate(chunk):
            inputs[row, width - len(ids):] = torch.tensor(ids)
            mask[row, width - len(ids):] = 1
        out = model.generate(input_ids=inputs.to(device), attention_mask=mask.to(device),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             repetition_penalty=1.1, pad_token_id=tokenizer.pad_token_id)
        texts += [tokenizer.decode(row, skip_special_tokens=True).strip()
                  for row in out[:, width:]]
    return texts
