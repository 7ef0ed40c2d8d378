"""Platform mode: the fine-tuning jobs API on the service's own `/v1`, its models served.

On with `TUNESHIP_PLATFORM=1` (settings: conf/jobs/default.yaml) or `TUNESHIP_JOBS_CONFIG=<jobs
settings YAML>` (`make serve-platform` sets them). Then, and only then, `tuneship.jobs` is
imported: the image carries only bentos/, the checkout's venv has tuneship.

- `/v1/files...` and `/v1/fine_tuning...` answer from `tuneship.jobs.api.build_app` mounted after
  the inference routes. `guards.Guard` passes those paths through (`DELEGATED_PREFIXES`): they
  check owners' keys themselves and take multipart uploads up to their own size limit. The
  inference routes keep the service's key (`TUNESHIP_API_KEY`); while `TUNESHIP_JOBS_API_KEY`
  is unset that same key is also the jobs owner `default`, so one client and one key do both.
- The service also follows `ft-*@*` (every registered job model holding an alias: a job's
  register stage sets @challenger, its gate maybe @champion) and polls the registry every
  `POLL_S` seconds unless `llm_registry_poll_s` / `TUNESHIP_LLM_REGISTRY_POLL_S` say otherwise.
  `JobsFollower` serves each job model under its bare registered name as well (`fine_tuned_model`
  answers whatever the gate decided): the version holding the served alias, else the newest.
  Only versions trained on the served base's weights (same SHA-256) are loaded; the others are
  listed as skipped by `GET /model`.

The classifier service (service.py) mounts the same jobs API under `/v1` and answers
`/classify` with `"model": "<fine_tuned_model>"` from that job's registered classifier
(classifiers.Named).

The jobs themselves run in `pipelines/jobs_worker.py`, never in this process.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

import follow
from starlette.applications import Starlette
from starlette.routing import Mount

log = logging.getLogger("tuneship.platform")
ENV_ON = "TUNESHIP_PLATFORM"
ENV_CONFIG = "TUNESHIP_JOBS_CONFIG"
ENV_JOBS_KEY = "TUNESHIP_JOBS_API_KEY"
ENV_SERVICE_KEY = "TUNESHIP_API_KEY"
DELEGATED_PREFIXES = ("/v1/files", "/v1/fine_tuning")
JOB_MODELS = "ft-*@*"  # tuneship.jobs.requests.registered_name: ft-<base>[-<suffix>]-<hex>
POLL_S = 2.0
_KEY = re.compile(r"^(?P<name>ft-.+)/(?P<version>[0-9]+)$")


def enabled() -> bool:
    return bool(os.environ.get(ENV_CONFIG)) or os.environ.get(ENV_ON, "").lower() in (
        "1", "true", "yes", "on")


def mount(app: Starlette, prefix: str = "") -> int | None:
    """Add the jobs routes to `app` under `prefix` (platform mode only: the LLM service's `/v1`
    app, or the classifier's root app with prefix `/v1`); the upload limit in bytes (for the
    guard's streamed-bytes bound), None when platform mode is off."""
    if not enabled():
        return None
    from tuneship.jobs.api import FORM_SLACK, build_app
    from tuneship.jobs.config import KeyEntry, hash_key, load_settings

    settings = load_settings(os.environ.get(ENV_CONFIG) or None)
    service_key = os.environ.get(ENV_SERVICE_KEY)
    if service_key and not os.environ.get(ENV_JOBS_KEY):
        settings = settings.model_copy(update={"keys": [
            *settings.keys, KeyEntry(owner="default", sha256=hash_key(service_key))]})
    app.router.routes.append(Mount(prefix, app=build_app(settings)))  # after the inference routes
    log.info("platform mode: jobs API on /v1 (store %s, %d owner key(s), base models %s)",
             settings.database_url, len(settings.keys), ", ".join(settings.models))
    return settings.limits.max_file_bytes + 2 * FORM_SLACK


def follow_refs(refs: list[str]) -> list[str]:
    """The registry references to follow: the bento's, plus the job models in platform mode."""
    return [*refs, JOB_MODELS] if enabled() and JOB_MODELS not in refs else list(refs)


def poll_s(configured: float) -> float:
    """The registry poll period: the configured one, else `POLL_S` in platform mode."""
    return configured if configured > 0 or not enabled() else POLL_S


def job_names(names: dict[str, str], alias: str) -> dict[str, str]:
    """`ft-...` -> the engine adapter of its version holding `alias`, else of its newest."""
    newest: dict[str, tuple[int, str]] = {}
    for served_id, adapter in names.items():
        found = _KEY.match(served_id)
        if found and int(found["version"]) > newest.get(found["name"], (0, ""))[0]:
            newest[found["name"]] = (int(found["version"]), adapter)
    bare = {name: names.get(f"{name}@{alias}", adapter) for name, (_, adapter) in newest.items()}
    return {name: adapter for name, adapter in bare.items() if name not in names}


class JobsFollower(follow.Follower):
    """A Follower that also serves each job model under its bare name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._names_lock = threading.Lock()

    def reload(self) -> dict[str, Any]:
        with self._names_lock:  # one reload (and its names) at a time
            result = super().reload()
            names = self.served.names
            self.served.names = {**job_names(names, self.alias), **names}
        result["models"] = self.served.model_ids()
        return result


def follower_class() -> type[follow.Follower]:
    return JobsFollower if enabled() else follow.Follower
