"""Causal-LM tokenizers, base models, LoRA adapters and the record that ties an adapter to its base.

A base model comes from `model.pretrained` (a local folder, `pkg:`, `gguf:` or a hub id) or is
built at random from `model.from_config` (tests); a random base is saved under
`<work_dir>/base_model` so the adapter can always be re-applied to the exact weights it was
trained on. `base_model.json`, written beside the adapter, names the base and pins it by SHA-256.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tuneship import gguf
from tuneship.config import ModelConfig
from tuneship.errors import TuneshipError
from tuneship.sources import resolve_model_path

log = logging.getLogger(__name__)
BASE_FILE = "base_model.json"


@dataclass(frozen=True)
class BaseRef:
    """Which weights an adapter belongs to."""

    name: str      # model.name
    source: str    # the configured spec (gguf:..., pkg:..., a path, a hub id, or from_config)
    path: str      # the folder (or hub id) `from_pretrained` loads
    sha256: str | None  # of the weight files (None for a hub id that is not a local folder)

    def save(self, folder: Path) -> None:
        (Path(folder) / BASE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> BaseRef:
        path = Path(folder) / BASE_FILE
        if not path.is_file():
            raise TuneshipError(f"{path} not found: run the train stage first")
        return cls(**json.loads(path.read_text()))


def load_tokenizer(cfg: ModelConfig, cache_dir: str | Path) -> PreTrainedTokenizerBase:
    """`model.tokenizer` (default: the base model's), with a pad token (eos when it has none).

    A `gguf:` tokenizer of a model built from_config converts only the tokenizer (once).
    """
    part: gguf.Part = "tokenizer" if cfg.from_config else "model"
    source = resolve_model_path(cfg.tokenizer or cfg.pretrained, cache_dir, part)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=cfg.revision)
    except OSError as err:
        raise TuneshipError(f"cannot load a tokenizer from '{source}': {err}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_base(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, cache_dir: str | Path,
               work_dir: Path) -> tuple[PreTrainedModel, BaseRef]:
    """The base causal LM and its reference (a from_config model is saved to work_dir first)."""
    if cfg.from_config:
        spec = dict(cfg.from_config)
        config = AutoConfig.for_model(spec.pop("model_type"), vocab_size=len(tokenizer),
                                      pad_token_id=tokenizer.pad_token_id,
                                      bos_token_id=tokenizer.bos_token_id,
                                      eos_token_id=tokenizer.eos_token_id, **spec)
        model = AutoModelForCausalLM.from_config(config)
        folder = work_dir / "base_model"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return model, BaseRef(cfg.name, "from_config", str(folder), gguf.sha256_files(folder))
    path = resolve_model_path(cfg.pretrained, cache_dir)
    model = load_base(path, cfg.revision)
    return model, BaseRef(cfg.name, str(cfg.pretrained), path, weights_sha256(path))


def load_base(path: str, revision: str | None = None) -> PreTrainedModel:
    """A causal LM from a folder or hub id, in fp32."""
    try:
        return AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=torch.float32)
    except OSError as err:
        raise TuneshipError(f"cannot load causal LM '{path}': {err}") from None


def weights_sha256(path: str) -> str | None:
    """SHA-256 of a local model folder's weights (recorded at GGUF conversion, else computed)."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    return gguf.recorded_sha256(folder) or gguf.sha256_files(folder)


def apply_lora(model: PreTrainedModel, lora: dict[str, Any] | None):
    """Wrap `model` with fresh LoRA adapters configured by `model.lora` (peft.LoraConfig keys)."""
    from peft import LoraConfig, get_peft_model

    if not lora:
        raise TuneshipError("the causal_lm task trains LoRA adapters: set model.lora "
                            "(r, lora_alpha, lora_dropout, target_modules)")
    try:
        config = LoraConfig(task_type="CAUSAL_LM", **lora)
        peft_model = get_peft_model(model, config)
    except (TypeError, ValueError) as err:
        raise TuneshipError(f"bad model.lora settings: {err}") from None
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info("LoRA: %d trainable of %d parameters (%.2f%%)", trainable, total,
             100 * trainable / total)
    return peft_model


def load_finetuned(model_dir: Path):
    """The base model with the trained adapter applied (a `PeftModel`), its tokenizer and ref."""
    from peft import PeftModel

    if not (model_dir / "adapter_config.json").is_file():
        raise TuneshipError(f"no trained adapter in {model_dir}: run the train stage first")
    ref = BaseRef.load(model_dir)
    model = PeftModel.from_pretrained(load_base(ref.path), str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model.eval(), tokenizer, ref


def check_block_size(model: PreTrainedModel, block_size: int | None) -> None:
    """A block must fit the model's positions."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if block_size and limit and block_size > limit:
        raise TuneshipError(f"data.block_size={block_size} is longer than the model's "
                            f"{limit} positions: lower data.block_size")
