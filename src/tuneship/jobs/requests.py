"""The body of `POST /fine_tuning/jobs`, checked: OpenAI's fields, our allow-list and limits."""

from __future__ import annotations

import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError

from tuneship.jobs.config import JobsSettings
from tuneship.jobs.errors import ApiError

Auto = Literal["auto"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hyperparameters(_Strict):
    n_epochs: Auto | StrictInt = "auto"
    batch_size: Auto | StrictInt = "auto"
    learning_rate_multiplier: Auto | StrictFloat | StrictInt = "auto"


class Supervised(_Strict):
    hyperparameters: Hyperparameters = Hyperparameters()


class Method(_Strict):
    type: Literal["supervised"]
    supervised: Supervised | None = None


class CreateJob(_Strict):
    model: StrictStr
    training_file: StrictStr
    validation_file: None = None  # the validation split is cut from training_file
    hyperparameters: Hyperparameters | None = None  # deprecated by OpenAI in favour of `method`
    method: Method | None = None
    suffix: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,39}$")
    seed: StrictInt | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, StrictStr] | None = None
    integrations: list[Any] | None = Field(None, max_length=0)

    def hyper(self) -> Hyperparameters:
        if self.method and self.method.supervised:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or Hyperparameters()


HINTS = {"suffix": "1-40 characters: letters, digits, '_', '.', '-'",
         "validation_file": "not supported: the validation split is cut from training_file",
         "integrations": "not supported here", "method.type": "only 'supervised' is supported"}


def parse(body: Any, settings: JobsSettings) -> CreateJob:
    """Validate the request; a 400 names the first bad field (`param`) and what it should be."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        request = CreateJob.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("function-", "literal")))
        hint = HINTS.get(param) or first["msg"]
        raise ApiError(400, f"{param}: {hint} (got {first.get('input')!r})", param=param) from None
    if request.method and request.hyperparameters:
        raise ApiError(400, "give hyperparameters in method.supervised.hyperparameters (the "
                       "top-level 'hyperparameters' is deprecated), not both", param="hyperparameters")
    if request.model not in settings.models:
        raise ApiError(400, f"model {request.model!r} is not available for fine-tuning; choose "
                       f"one of {sorted(settings.models)}", param="model", code="model_not_available")
    _check_limits(request.hyper(), settings)
    _check_metadata(request.metadata)
    return request


def _check_limits(hyper: Hyperparameters, settings: JobsSettings) -> None:
    limits = settings.limits
    bounds = {"n_epochs": (1, limits.max_epochs), "batch_size": (1, limits.max_batch_size)}
    for name, (low, high) in bounds.items():
        value = getattr(hyper, name)
        if value != "auto" and not low <= value <= high:
            raise ApiError(400, f"{name} must be 'auto' or an integer from {low} to {high}, got "
                           f"{value}", param=f"hyperparameters.{name}")
    lr = hyper.learning_rate_multiplier
    if lr != "auto" and not 0 < lr <= limits.max_lr_multiplier:
        raise ApiError(400, f"learning_rate_multiplier must be 'auto' or in (0, "
                       f"{limits.max_lr_multiplier}], got {lr}",
                       param="hyperparameters.learning_rate_multiplier")


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if not metadata:
        return
    if len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise ApiError(400, "metadata: at most 16 pairs, keys up to 64 and values up to 512 "
                       "characters", param="metadata")


def seed_of(request: CreateJob) -> int:
    return request.seed if request.seed is not None else secrets.randbelow(2**31)


def registered_name(model: str, suffix: str | None, job_id: str) -> str:
    """The MLflow name (and `fine_tuned_model`) of a job's result: `ft-<base>[-<suffix>]-<id>`.

    OpenAI writes `ft:<base>:<org>:<suffix>:<id>`; Tuneship's registry names allow letters,
    digits, '_', '.' and '-' only (src/tuneship/config.py), hence the dashes.
    """
    parts = ["ft", model, *([suffix] if suffix else []), job_id.removeprefix("ftjob-")]
    return "-".join(parts)
