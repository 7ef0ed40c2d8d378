"""Classifier tokenizers and models from config: a local folder, an installed package or a config dict."""

from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tuneship.config import ModelConfig
from tuneship.errors import TuneshipError
from tuneship.sources import resolve_model_path


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of `model.tokenizer` (default: the pretrained model's own)."""
    source = resolve_model_path(cfg.tokenizer or cfg.pretrained)
    try:
        return AutoTokenizer.from_pretrained(source, revision=cfg.revision)
    except OSError as err:
        raise TuneshipError(f"cannot load a tokenizer from '{source}': {err}") from None


def label_maps(label_names: list[str]) -> dict:
    """`id2label` / `label2id` so the saved model and pipelines speak label names."""
    return {"id2label": dict(enumerate(label_names)),
            "label2id": {name: i for i, name in enumerate(label_names)}}


def build_classifier(cfg: ModelConfig, label_names: list[str],
                     vocab_size: int | None = None) -> PreTrainedModel:
    """A sequence classifier: pretrained weights with a new head, or random init from a config."""
    maps = label_maps(label_names)
    if cfg.from_config:
        spec = dict(cfg.from_config)
        config = AutoConfig.for_model(spec.pop("model_type"), num_labels=len(label_names),
                                      vocab_size=vocab_size, **maps, **spec)
        return AutoModelForSequenceClassification.from_config(config)
    source = resolve_model_path(cfg.pretrained)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            source, revision=cfg.revision, num_labels=len(label_names), **maps
        )
    except OSError as err:
        raise TuneshipError(f"cannot load model '{source}': {err}") from None


def freeze_embeddings(model: PreTrainedModel) -> int:
    """Freeze the input embedding matrix; return how many parameters stop training."""
    weights = model.get_input_embeddings().weight
    weights.requires_grad_(False)
    return weights.numel()


def freeze_bottom_layers(model: PreTrainedModel, n: int) -> int:
    """Freeze the first `n` transformer blocks: no backward pass runs through them at all
    (with frozen embeddings), which is where most of a step's time goes."""
    if n == 0:
        return 0
    blocks = _blocks(model)
    if n >= len(blocks):
        raise TuneshipError(f"train.freeze_layers={n}: the model has only {len(blocks)} layers")
    frozen = 0
    for block in blocks[:n]:
        for param in block.parameters():
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def _blocks(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The stack of transformer blocks (the ModuleList as long as `num_hidden_layers`)."""
    depth = model.config.num_hidden_layers
    for module in model.base_model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == depth:
            return module
    raise TuneshipError(f"cannot find the transformer blocks of {type(model).__name__}")
