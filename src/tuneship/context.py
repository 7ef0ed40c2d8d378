"""What the orchestrator hands each stage: the validated config sections, the task plug-in, the
working folder and the pipeline's MLflow run."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from tuneship import tracking
from tuneship.config import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    RegistryConfig,
    TrainConfig,
    section,
)
from tuneship.errors import TuneshipError
from tuneship.workdir import WorkDir

if TYPE_CHECKING:
    from tuneship.tasks.base import Task


@dataclass
class StageContext:
    cfg: DictConfig
    task: Task
    work: WorkDir

    @classmethod
    def from_config(cls, cfg: DictConfig) -> StageContext:
        """Build the task from `cfg.task` (`_target_`) and name the working folder."""
        if not isinstance(cfg.get("task"), DictConfig) or "_target_" not in cfg.task:
            raise TuneshipError("config has no task plug-in: choose one with task=classification "
                                "or task=causal_lm (conf/task/)")
        try:
            task = instantiate(cfg.task)
        except Exception as err:  # Hydra wraps the target's own error
            raise TuneshipError(f"cannot build task {cfg.task.get('_target_')}: {err}") from None
        return cls(cfg, task, WorkDir(Path(cfg.paths.work_dir)))

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def experiment(self) -> str:
        return str(self.cfg.experiment_name)

    @property
    def cache_dir(self) -> Path:
        return Path(self.cfg.paths.cache_dir)

    @cached_property
    def data(self) -> DataConfig:
        return section(self.cfg, "data", DataConfig)

    @cached_property
    def model(self) -> ModelConfig:
        return section(self.cfg, "model", ModelConfig)

    @cached_property
    def train(self) -> TrainConfig:
        return section(self.cfg, "train", TrainConfig)

    @cached_property
    def eval(self) -> EvalConfig:
        return section(self.cfg, "eval", EvalConfig)

    @cached_property
    def registry(self) -> RegistryConfig:
        return section(self.cfg, "registry", RegistryConfig)

    def client(self) -> MlflowClient:
        """An MLflow client on the configured store (the experiment exists afterwards)."""
        return tracking.connect(self.registry)

    def start_run(self, run_name: str) -> str:
        """Open the pipeline's run (the preprocess stage does, once the data is known)."""
        return tracking.start_pipeline_run(self.registry, self.work, run_name)

    def stage_run(self, stage: str, main: bool = True) -> contextlib.AbstractContextManager:
        """Reopen the pipeline's run for `stage`; a no-op on ranks other than 0 (`main`)."""
        if not main:
            return contextlib.nullcontext()
        return tracking.stage_run(self.registry, self.work, stage)

    @staticmethod
    def active_run_id() -> str:
        run = mlflow.active_run()
        if run is None:
            raise TuneshipError("no MLflow run is active")
        return run.info.run_id
