"""The lifecycle as named stages; the Hydra entry points in `pipelines/` call these."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable

from omegaconf import DictConfig

from tuneship import settings  # noqa: F401  (offline hub, config resolvers)
from tuneship.errors import TuneshipError

log = logging.getLogger(__name__)
ORDER = ("preprocess", "train", "evaluate", "register", "promote")
# `task:` → the modules whose `run(cfg)` replace the classification stages (others are shared).
TASK_STAGES: dict[str, dict[str, str]] = {
    "classification": {},
    "causal_lm": {"preprocess": "tuneship.lm.data", "train": "tuneship.lm.train",
                  "evaluate": "tuneship.lm.evaluate", "register": "tuneship.lm.register",
                  "promote": "tuneship.lm.promote"},
}


def _stage(name: str, task: str = "classification") -> Callable[[DictConfig], dict]:
    # Imported on use: a stage run alone loads only what it needs.
    if task not in TASK_STAGES:
        raise TuneshipError(f"unknown task {task!r}; choose from {sorted(TASK_STAGES)}")
    if name in TASK_STAGES[task]:
        return importlib.import_module(TASK_STAGES[task][name]).run
    if name == "preprocess":
        from tuneship.data.stage import run
    elif name == "train":
        from tuneship.train.stage import run
    elif name == "evaluate":
        from tuneship.evaluation.stage import run
    elif name == "register":
        from tuneship.registry.register import run
    elif name == "promote":
        from tuneship.registry.promote import run
    elif name == "rollback":
        from tuneship.registry.promote import rollback as run
    else:
        raise ValueError(f"unknown stage {name!r}")
    return run


def run_stages(cfg: DictConfig, names: tuple[str, ...] = ORDER) -> dict[str, dict]:
    """Run `names` in order, logging each stage's wall time and result."""
    results: dict[str, dict] = {}
    for name in names:
        start = time.perf_counter()
        log.info("stage %s: start", name)
        results[name] = _stage(name, cfg.get("task", "classification"))(cfg)
        log.info("stage %s: done in %.1f s", name, time.perf_counter() - start)
    return results


def objective(results: dict[str, dict]) -> float | None:
    """The headline test metric, returned to Hydra sweepers (direction: see hparams_search)."""
    report = results.get("evaluate")
    return report["metrics"][report["headline"]] if report else None
