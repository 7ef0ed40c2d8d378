"""The optimize stage: build the task's candidate runtimes of a registered version, score each
against the version's fp32 model on the test split, and record every verdict (record.py).

Runs after promote (`make optimize`): the version is the one this pipeline registered, else
@champion (`optimize.version` names another). Under torchrun only rank 0 works.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tuneship.config import OptimizeConfig, OptimizeGateConfig, section
from tuneship.context import StageContext
from tuneship.errors import TuneshipError
from tuneship.optimize import gate, record
from tuneship.optimize.machine import machine
from tuneship.settings import set_threads
from tuneship.tasks.base import RuntimeSuite
from tuneship.tracking import by_alias

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict:
    """Build, score and record the configured candidates; return the manifest and the version."""
    if int(os.environ.get("RANK", "0")) != 0:
        return {"skipped": "not rank 0"}
    cfg = section(ctx.cfg, "optimize", OptimizeConfig)
    set_threads(ctx.train.num_threads)
    client = ctx.client()
    version = pick_version(ctx, client, cfg.version)
    start = time.perf_counter()
    suite = ctx.task.runtime_suite(ctx, version, cfg)
    unknown = [name for name in cfg.candidates if name not in suite.runtimes]
    if unknown:
        raise TuneshipError(f"optimize.candidates {unknown}: the {ctx.task.name} task builds "
                            f"{list(suite.runtimes)}")
    out = ctx.work.optimize
    manifest = optimize(client, version, suite, cfg.candidates, cfg.gate, out)
    passed = [r["name"] for r in manifest["runtimes"] if r["passed"]]
    log.info("optimize %s v%s: passed %s in %.1f s", version.name, version.version,
             passed or "none", time.perf_counter() - start)
    return {"name": version.name, "version": str(version.version), "passed": passed,
            "manifest": manifest}


def optimize(client: MlflowClient, version: ModelVersion, suite: RuntimeSuite,
             names: list[str], rules: OptimizeGateConfig, out: Path) -> dict:
    """Judge each runtime in `names`, log the passed ones and the manifest to `version`.

    A candidate that cannot be built is recorded as failed with the error; the others go on.
    """
    build_dir = out / "build"
    shutil.rmtree(build_dir, ignore_errors=True)
    verdicts = [verdict(suite, name, rules, build_dir) for name in names]
    manifest = record.manifest(suite.reference, machine(), verdicts)
    folder = record.stage(out, manifest, verdicts)
    record.publish(client, version, folder, record.tags(verdicts))
    shutil.rmtree(build_dir, ignore_errors=True)
    for v in verdicts:
        log.info("runtime %s: %s %s", v.name, "passed" if v.passed else f"FAILED ({v.reason})",
                 json.dumps(v.parity))
    return manifest


def verdict(suite: RuntimeSuite, name: str, rules: OptimizeGateConfig,
            build_dir: Path) -> record.Verdict:
    """Build `name`, score it and apply the gate."""
    start = time.perf_counter()
    kind, dtype = suite.runtimes[name]
    try:
        candidate = suite.build(name, build_dir / name)
    except Exception as err:  # an exporter or quantizer that cannot handle this model
        log.warning("runtime %s could not be built: %s", name, err, exc_info=True)
        return record.Verdict(name, kind, dtype, reason=f"build failed: {type(err).__name__}: {err}")
    parity = suite.parity(candidate)
    log.info("runtime %s built and scored in %.1f s", name, time.perf_counter() - start)
    return record.Verdict(name, kind, dtype, parity, gate.judge(rules, parity), candidate)


def pick_version(ctx: StageContext, client: MlflowClient, spec: str) -> ModelVersion:
    """`auto`: the version this pipeline registered (`<work_dir>/registered.json`), else
    @champion; `@alias`; or a version number, of `registry.model_name`."""
    name = ctx.registry.model_name
    if spec == "auto":
        mine = _registered_here(ctx, client)
        if mine is not None:
            return mine
        spec = f"@{ctx.registry.champion_alias}"
    if spec.startswith("@"):
        found = by_alias(client, name, spec[1:])
        if found is None:
            raise TuneshipError(f"{name} has no {spec}: register (and promote) a model first, "
                                "or set optimize.version")
        return found
    try:
        return client.get_model_version(name, spec)
    except MlflowException:
        raise TuneshipError(f"{name} has no version {spec} (optimize.version)") from None


def _registered_here(ctx: StageContext, client: MlflowClient) -> ModelVersion | None:
    path = ctx.work.registered
    if not path.is_file():
        return None
    mine = json.loads(path.read_text())
    if mine.get("name") != ctx.registry.model_name:
        return None
    try:
        return client.get_model_version(mine["name"], str(mine["version"]))
    except MlflowException:  # the store was reset since
        return None
