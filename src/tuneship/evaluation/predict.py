"""Batched inference over a tokenized split (dynamic padding, no gradients)."""

from __future__ import annotations

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedModel, PreTrainedTokenizerBase

from tuneship.data.columns import column
from tuneship.train.device import pick_device


@torch.inference_mode()
def predict_proba(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  split: datasets.Dataset, batch_size: int) -> np.ndarray:
    """Class probabilities, shape (rows, labels), in the split's order."""
    device = pick_device("auto")
    model.to(device).eval()
    features = split.select_columns(["input_ids", "attention_mask"])
    # Sort by length so each batch pads little; restore the order at the end.
    order = np.argsort(column(split, "length"), kind="stable")
    loader = DataLoader(features.select(order), batch_size=batch_size,
                        collate_fn=DataCollatorWithPadding(tokenizer))
    probs = [torch.softmax(model(**{k: v.to(device) for k, v in batch.items()}).logits.float(),
                           dim=-1).cpu() for batch in loader]
    out = np.empty((len(split), model.config.num_labels), dtype=np.float32)
    out[order] = torch.cat(probs).numpy()
    return out
