"""Typed views of the Hydra config: bad values fail before any work, with a clear message.

Hydra composes `conf/`; each stage validates the sections it uses with these pydantic models
(`extra="forbid"` catches typos such as `train.learning_rate=...`).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneship.errors import TuneshipError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class DataConfig(_Section):
    name: str
    source: str
    format: Literal["csv", "tsv", "json", "jsonl", "parquet", "text", None] = None
    text_column: str = "text"
    label_column: str | None = "label"
    label_names: list[str] | None = None
    lowercase: bool = False
    strip_html: bool = True
    unicode_form: Literal["NFC", "NFKC", "NFD", "NFKD", None] = "NFKC"
    min_chars: int = Field(1, ge=0)
    drop_duplicates: bool = True
    validation_size: float = Field(0.05, gt=0, le=0.5)
    test_size: float = Field(0.05, gt=0, le=0.5)
    # Files used as these splits as they are (never re-split; the others are cut from `source`).
    given: dict[Literal["validation", "test"], str | None] = {}
    behaviour: str | None = None  # classification: a suites file (conf/behaviour/), scored at evaluate
    max_rows: int | None = Field(None, gt=0)
    max_train_samples: int | None = Field(None, gt=0)
    max_length: int = Field(128, gt=0, le=8192)
    block_size: int | None = Field(None, gt=0)  # causal LM: pack tokens into blocks of this size
    chunk_chars: int = Field(4000, gt=0)  # causal LM corpus: split unit (cut at blank lines)
    prompt_column: str = "prompt"         # causal LM instruction rows
    response_column: str = "response"

    @model_validator(mode="after")
    def _splits_leave_train(self) -> DataConfig:
        if self.validation_size + self.test_size > 0.8:
            raise ValueError("validation_size + test_size must leave at least 20% for training")
        return self


class ModelConfig(_Section):
    name: str
    pretrained: str | None = None
    tokenizer: str | None = None
    from_config: dict[str, Any] | None = None
    revision: str | None = None
    lora: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if not self.pretrained and not self.from_config:
            raise ValueError("set model.pretrained (a path or hub id) or model.from_config")
        if self.from_config and not (self.tokenizer or self.pretrained):
            raise ValueError("a model built from_config needs model.tokenizer")
        return self


class TrainConfig(_Section):
    epochs: float = Field(1, gt=0)
    max_steps: int = -1
    batch_size: int = Field(32, gt=0)
    eval_batch_size: int = Field(128, gt=0)
    lr: float = Field(5e-5, gt=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    grad_accum: int = Field(1, gt=0)
    freeze_embeddings: bool = False
    freeze_layers: int = Field(0, ge=0)
    group_by_length: bool = True
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_steps: int = Field(200, gt=0)
    save_steps: int = Field(200, gt=0)
    save_total_limit: int = Field(2, gt=0)
    early_stopping_patience: int | None = Field(3, ge=1)
    metric_for_best_model: str = "accuracy"
    resume: str = "auto"
    logging_steps: int = Field(25, gt=0)
    num_threads: int | None = Field(None, gt=0)
    dataloader_workers: int = Field(0, ge=0)
    fsdp: str = ""                        # e.g. "full_shard auto_wrap" (Trainer's own FSDP)
    fsdp_config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _save_on_eval(self) -> TrainConfig:
        if self.save_steps % self.eval_steps:
            raise ValueError("train.save_steps must be a multiple of train.eval_steps")
        return self


class EvalConfig(_Section):
    metrics: list[str] = ["accuracy", "precision", "recall", "f1"]
    average: Literal["macro", "micro", "weighted"] = "macro"
    headline: str = "accuracy"
    bootstrap_samples: int = Field(1000, ge=0)
    confidence: float = Field(0.95, gt=0, lt=1)
    worst_examples: int = Field(25, ge=0)
    batch_size: int = Field(128, gt=0)
    # classification: calibration bins, and named slices of the test split, each a rule:
    # {max_words: N} | {min_words: N} | {contains: [words]} (whole words, case-insensitive)
    calibration_bins: int = Field(10, ge=2)
    slices: dict[str, dict[str, Any]] = {}
    # causal LM only: sample generations logged, their length, test rows scored by ROUGE/BLEU
    samples: int = Field(4, ge=0)
    max_new_tokens: int = Field(48, gt=0)
    generate_rows: int = Field(64, gt=0)


class GateConfig(_Section):
    metric: str = "accuracy"
    min: float | None = None
    max: float | None = None
    min_improvement: float = Field(0.0, ge=0)
    higher_is_better: bool = True
    # Other recorded metrics with their own floors, e.g. {perplexity_reduction: 0.3}.
    floors: dict[str, float] = {}


class RegistryConfig(_Section):
    tracking_uri: str
    artifact_location: str | None = None
    experiment: str
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    challenger_alias: str = "challenger"
    champion_alias: str = "champion"
    # causal_lm: the registered model holding base weights (one version per SHA-256);
    # None = the model's name (model.name)
    base_model_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    gate: GateConfig = GateConfig()


class OptimizeGateConfig(_Section):
    """A candidate runtime passes when it stays this close to the version's fp32 model."""

    max_accuracy_drop: float = Field(0.005, ge=0, le=1)   # classification: absolute, on the test split
    min_agreement: float = Field(0.99, ge=0, le=1)        # classification: same label as fp32
    max_perplexity_rise: float = Field(0.02, ge=0)        # causal LM: perplexity ratio - 1


class OptimizeConfig(_Section):
    # auto: the version this pipeline registered, else @champion; or `@<alias>`, or a number.
    version: str = Field("auto", pattern=r"^(auto|@[A-Za-z0-9][A-Za-z0-9_\-]*|[1-9][0-9]*)$")
    candidates: list[str] = ["onnx-fp32", "onnx-int8", "torch-bf16"]
    gate: OptimizeGateConfig = OptimizeGateConfig()
    batch_size: int = Field(64, gt=0)                # scoring batches (sorted by length)
    max_rows: int | None = Field(None, gt=0)         # score on the first N test rows only

    @field_validator("version", mode="before")
    @classmethod
    def _number_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _unique(self) -> OptimizeConfig:
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError(f"optimize.candidates lists a runtime twice: {self.candidates}")
        return self


S = TypeVar("S", bound=_Section)


def section(cfg: DictConfig, key: str, schema: type[S]) -> S:
    """Validate `cfg[key]` against `schema`; raise a TuneshipError naming each bad value."""
    if key not in cfg:
        raise TuneshipError(f"config has no '{key}' section")
    raw = OmegaConf.to_container(cfg[key], resolve=True)
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{key}.{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"
            if e["loc"]
            else f"{key}: {e['msg']}"
            for e in err.errors()
        )
        raise TuneshipError(f"bad config value: {problems}") from None


SCHEMAS: dict[str, type[_Section]] = {
    "data": DataConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig,
    "registry": RegistryConfig, "optimize": OptimizeConfig,
}


def validate_all(cfg: DictConfig) -> None:
    """Check every section up front, so a typo fails before minutes of work."""
    for key, schema in SCHEMAS.items():
        section(cfg, key, schema)
