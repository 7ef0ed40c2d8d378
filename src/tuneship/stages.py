"""The lifecycle as named stages over one contract: each stage is `run(ctx) -> dict`, written
once; the task plug-in (`conf/task/`) supplies what differs. `pipelines/` and
`tuneship.run_pipeline` call `run_stages`."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable

from omegaconf import DictConfig

from tuneship import settings  # noqa: F401  (offline hub, config resolvers)
from tuneship.config import validate_all
from tuneship.context import StageContext
from tuneship.errors import TuneshipError

log = logging.getLogger(__name__)
ORDER = ("preprocess", "train", "evaluate", "register", "promote")
# stage → the module (and function) that runs it; imported on use, so a stage run alone loads
# only what it needs.
STAGES = {"preprocess": "tuneship.data.stage:run", "train": "tuneship.train.stage:run",
          "evaluate": "tuneship.evaluation.stage:run", "register": "tuneship.registry.register:run",
          "promote": "tuneship.registry.promote:run", "rollback": "tuneship.registry.promote:rollback",
          "optimize": "tuneship.optimize.stage:run"}


def stage(name: str) -> Callable[[StageContext], dict]:
    """The function that runs stage `name`."""
    if name not in STAGES:
        raise TuneshipError(f"unknown stage {name!r}; choose from {list(STAGES)}")
    module, _, function = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), function)


def run_stages(cfg: DictConfig, names: tuple[str, ...] = ORDER) -> dict[str, dict]:
    """Validate the config, then run `names` in order, logging each stage's wall time."""
    validate_all(cfg)
    ctx = StageContext.from_config(cfg)
    results: dict[str, dict] = {}
    for name in names:
        start = time.perf_counter()
        log.info("stage %s (%s): start", name, ctx.task.name)
        results[name] = stage(name)(ctx)
        log.info("stage %s: done in %.1f s", name, time.perf_counter() - start)
    return results


def objective(results: dict[str, dict]) -> float | None:
    """The headline test metric, returned to Hydra sweepers (direction: see hparams_search)."""
    report = results.get("evaluate")
    return report["metrics"][report["headline"]] if report else None
