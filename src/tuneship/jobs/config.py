"""The jobs service's settings: `conf/jobs/default.yaml` (+ `key=value` overrides), validated.

The same settings travel from the API to the worker and into each job's process (as JSON in
`TUNESHIP_JOBS_SETTINGS`), so every process sees one store, one files folder, one allow-list.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Literal

from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tuneship.errors import TuneshipError
from tuneship.settings import project_root

ENV_SETTINGS = "TUNESHIP_JOBS_SETTINGS"
ENV_API_KEY = "TUNESHIP_JOBS_API_KEY"
Task = Literal["causal_lm", "classification"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyEntry(_Section):
    owner: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Limits(_Section):
    max_file_bytes: int = Field(20_000_000, gt=0)
    max_lines: int = Field(100_000, gt=0)
    min_lines: int = Field(10, ge=1)
    max_line_chars: int = Field(100_000, gt=0)
    max_queued_jobs: int = Field(5, ge=1)
    max_stored_bytes: int = Field(200_000_000, gt=0)
    max_epochs: int = Field(20, ge=1)
    max_batch_size: int = Field(256, ge=1)
    max_lr_multiplier: float = Field(10.0, gt=0)


class Executor(_Section):
    kind: Literal["local", "ray"] = "local"
    concurrency: int = Field(1, ge=1, le=64)
    queue_db: str
    max_attempts: int = Field(3, ge=1)
    poll_s: float = Field(0.5, gt=0)
    kill_grace_s: float = Field(5.0, ge=0)
    # kind: ray (ray_executor.py): Ray's Job Submission API at the dashboard's address.
    ray_address: str = "http://127.0.0.1:8265"
    ray_num_cpus: float = Field(1.0, gt=0)
    ray_num_gpus: float = Field(0.0, ge=0)
    ray_python: str | None = None
    ray_env: list[str] = ["MLFLOW_*", "TUNESHIP_*", "HF_*", "TRANSFORMERS_*", "TOKENIZERS_*"]
    ray_runtime_env: dict[str, Any] = {}
    ray_unreachable_s: float = Field(120.0, gt=0)

    @field_validator("ray_address")
    @classmethod
    def _dashboard_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be the Ray dashboard's URL (Job Submission API), e.g. "
                             f"http://127.0.0.1:8265, got {value!r}")
        return value

    @field_validator("ray_runtime_env")
    @classmethod
    def _no_env_vars(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "env_vars" in value:
            raise ValueError("env_vars are shown in Ray's job info: list variable names in "
                             "executor.ray_env instead (they travel in a private launch file)")
        return value

    @field_validator("ray_python")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_absolute():
            raise ValueError(f"must be an absolute path to python on the Ray nodes, got {value!r}")
        return value


class BaseModelEntry(_Section):
    task: Task
    experiment: str
    overrides: list[str] = []


class JobsSettings(_Section):
    state_dir: str
    database_url: str
    files_dir: str
    work_dir: str
    host: str = "127.0.0.1"
    port: int = Field(8100, ge=0, le=65535)
    keys: list[KeyEntry] = []
    limits: Limits = Limits()
    executor: Executor
    on_model_ready: str | None = None
    models: dict[str, BaseModelEntry]

    def to_env(self) -> dict[str, str]:
        """The environment entry that hands these settings to a child process."""
        return {ENV_SETTINGS: self.model_dump_json()}


def hash_key(key: str) -> str:
    """How an API key is stored and looked up: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def default_path() -> Path:
    return project_root() / "conf" / "jobs" / "default.yaml"


def load_settings(path: str | Path | None = None, overrides: list[str] | None = None) -> JobsSettings:
    """Read the YAML, apply `key=value` overrides, resolve `${...}`, validate.

    `TUNESHIP_JOBS_API_KEY` (if set) adds an owner `default` with that key (hashed here).
    Raises `TuneshipError` naming each bad value.
    """
    import tuneship.settings  # noqa: F401  (the `tuneship_root` resolver)

    source = Path(path) if path else default_path()
    if not source.is_file():
        raise TuneshipError(f"jobs settings file not found: {source}")
    cfg = OmegaConf.merge(OmegaConf.load(source), OmegaConf.from_dotlist(list(overrides or [])))
    raw = OmegaConf.to_container(cfg, resolve=True)
    if key := os.environ.get(ENV_API_KEY):
        raw["keys"] = [*raw.get("keys", []), {"owner": "default", "sha256": hash_key(key)}]
    return validated(raw, str(source))


def validated(raw: dict, source: str = "settings") -> JobsSettings:
    try:
        return JobsSettings.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise TuneshipError(f"{source}: bad jobs setting: {problems}") from None


def from_env() -> JobsSettings:
    """The settings a parent process handed down (`JobsSettings.to_env`)."""
    if ENV_SETTINGS not in os.environ:
        raise TuneshipError(f"{ENV_SETTINGS} is not set: start jobs through the worker")
    return JobsSettings.model_validate_json(os.environ[ENV_SETTINGS])


def settings_from_cli(description: str, argv: list[str] | None = None) -> JobsSettings:
    """The settings the entry points take: `--config FILE` and `key=value` overrides."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="settings YAML (default: conf/jobs/default.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the settings")
    args = parser.parse_args(argv)
    return load_settings(args.config, args.overrides)
