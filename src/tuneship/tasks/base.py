"""The task plug-in: what differs between tasks. The stages (preprocess, train, evaluate,
register, promote, optimize) are written once and call these methods; they own everything else (MLflow
runs, rank-0 side effects, resume, redaction, lineage, the gate)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models.model import ModelInfo
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tuneship.config import OptimizeConfig
    from tuneship.context import StageContext
    from tuneship.workdir import Prepared


@dataclass
class Built:
    """A model ready to train, with what the train stage records about it."""

    model: PreTrainedModel
    signature: dict[str, Any] = field(default_factory=dict)  # resume only with the same values
    metrics: dict[str, float] = field(default_factory=dict)  # logged with the train metrics
    tags: dict[str, str] = field(default_factory=dict)       # set on the pipeline's run
    save_extra: Callable[[Path], None] | None = None         # files beside the saved model


@dataclass
class Logged:
    """What the register stage logged: the model's info and the task's part of the card."""

    info: ModelInfo
    card: str                                               # the task's section of the card
    lineage: dict[str, str] = field(default_factory=dict)  # extra version tags
    result: dict[str, str] = field(default_factory=dict)   # extra keys of the stage's result


@dataclass
class Candidate:
    """A runtime built from a registered version's fp32 model, ready to be scored against it."""

    name: str                   # e.g. onnx-int8
    runner: Any                 # what the task's suite scores (an onnxruntime session, a module)
    folder: Path | None = None  # its files (model.onnx), logged under runtimes/<name>/


class RuntimeSuite(ABC):
    """What a task gives the optimize stage for one version: the runtimes it can build and the
    parity figures of each against the version's fp32 model (`reference`) on the test split."""

    reference: ClassVar[str] = "torch-fp32"
    # name → (kind, dtype) of each runtime it builds, e.g. "onnx-int8": ("onnx", "int8")
    runtimes: ClassVar[dict[str, tuple[str, str]]]

    @abstractmethod
    def build(self, name: str, out: Path) -> Candidate:
        """Build runtime `name`, writing any files under `out`."""

    @abstractmethod
    def parity(self, candidate: Candidate) -> dict[str, float]:
        """The candidate's figures against the reference (keys the optimize gate knows)."""


class Task(ABC):
    """One task (classification, causal LM); built from `conf/task/<name>.yaml`."""

    name: ClassVar[str]
    mlflow_task: ClassVar[str]  # the MLflow transformers flavour's task of the registered model

    @abstractmethod
    def tokenizer(self, ctx: StageContext) -> PreTrainedTokenizerBase:
        """The tokenizer the data is encoded with (the model's own unless configured)."""

    @abstractmethod
    def prepare(self, ctx: StageContext, tokenizer: PreTrainedTokenizerBase) -> Prepared:
        """Read, clean, split and tokenize `data.source`; stats include `fingerprint`."""

    @abstractmethod
    def data_metrics(self, stats: dict) -> dict[str, float]:
        """The data stats logged as MLflow metrics."""

    @abstractmethod
    def logged_inputs(self, prepared: Prepared) -> dict[str, pd.DataFrame]:
        """Per split (`train`, `test`), the frame logged as the run's dataset input."""

    @abstractmethod
    def build_model(self, ctx: StageContext, prepared: Prepared,
                    tokenizer: PreTrainedTokenizerBase) -> Built:
        """The model to train (seeded by the caller before this runs)."""

    @abstractmethod
    def trainer_kwargs(self, ctx: StageContext, prepared: Prepared,
                       tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        """`data_collator`, `eval_dataset` and `compute_metrics` for `transformers.Trainer`."""

    @abstractmethod
    def evaluate(self, ctx: StageContext, prepared: Prepared) -> dict:
        """Score `<work_dir>/model` on the test split; write reports to `<work_dir>/eval`.

        Returns `metrics`, `headline`, `interval`, `confidence`, `rows` and task extras.
        """

    def logged_metrics(self, report: dict) -> dict[str, float]:
        """The report's metrics under their MLflow names (`test_<name>` by default)."""
        return {f"test_{k}": v for k, v in report["metrics"].items()}

    @abstractmethod
    def log_model(self, ctx: StageContext, prepared: Prepared, lineage: dict[str, str],
                  report: dict, train: dict) -> Logged:
        """Log (and register as `registry.model_name`) the trained model inside the stage run."""

    @abstractmethod
    def rescore(self, ctx: StageContext, version: ModelVersion, metric: str) -> float:
        """Score a registered version on this pipeline's test split (a champion tested on
        other data)."""

    def runtime_suite(self, ctx: StageContext, version: ModelVersion,
                      cfg: OptimizeConfig) -> RuntimeSuite:
        """The optimize stage's runtimes of a registered `version`, scored on this test split."""
        from tuneship.errors import TuneshipError

        raise TuneshipError(f"the {self.name} task has no optimized runtimes")
