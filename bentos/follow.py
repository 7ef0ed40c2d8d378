"""The adapters the LLM service serves, under which ids, and following the registry at run time.

Served ids of a registered adapter version: `name/version`, `name@alias` for each alias it holds
among the followed references, and the bare `name` for the version holding the service's alias
(`champion` by default). The bento brings the adapters `make bento` resolved; `Follower.reload`
resolves the same references again (adapter_refs.py) against the registry, loads new versions
(downloaded with MLflow), moves aliases and unloads versions no reference names any more, between
two decode steps and without a restart. It needs `mlflow` and a tracking URI in the service
(`bentoml serve` from the checkout's venv has both; the image has neither, so it serves what it
was built with).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import adapter_refs
import registry_client

log = logging.getLogger("tuneship.follow")


def engine_name(key: str) -> str:
    """The peft adapter name of a served key (peft names are module keys: no dots)."""
    return key.replace(".", "_")


def served_names(aliases: dict[str, str], versions: list[str], alias: str) -> dict[str, str]:
    """Every served id of the registered adapters -> its engine adapter name."""
    names = {key: engine_name(key) for key in versions}
    for ref, key in aliases.items():
        names[ref] = engine_name(key)
        name, _, held = ref.rpartition("@")
        if held == alias:
            names[name] = engine_name(key)
    return names


def version_card(version: Any) -> dict[str, Any]:
    """Registry version, metrics and lineage of an adapter version (from its tags)."""
    tags = version.tags or {}
    return {"name": version.name, "version": str(version.version),
            "metrics": {k.removeprefix("metric."): float(v) for k, v in tags.items()
                        if k.startswith("metric.")},
            "lineage": {k: tags.get(k, "") for k in ("run_id", "git_commit", "data_fingerprint",
                                                      "base_model", "experiment",
                                                      adapter_refs.BASE_TAG)}}


class Follower:
    """Keeps the served adapters in line with the followed registry references."""

    def __init__(self, served: Any, refs: list[str], base_sha: str | None, alias: str,
                 tracking_uri: str | None, cache_dir: Path,
                 cards: dict[str, dict[str, Any]], fixed: dict[str, str]) -> None:
        self.served, self.refs, self.base_sha, self.alias = served, refs, base_sha, alias
        self.tracking_uri, self.cache_dir = tracking_uri, cache_dir
        self.cards = cards      # served key -> registry card (shown by /model)
        self.fixed = fixed      # ids of adapters not from the registry (TUNESHIP_LLM_ADAPTERS)
        self.skipped: dict[str, str] = {}
        self._lock = threading.Lock()

    def reload(self) -> dict[str, Any]:
        """Resolve the references now; load, re-alias and unload to match. RuntimeError when
        the registry cannot be reached from here."""
        client = self._client()
        with self._lock:
            found = adapter_refs.resolve(client, self.refs, self.base_sha)
            engine = self.served.engine
            added = [key for key in found.versions if engine_name(key) not in engine.adapters]
            for key in added:
                engine.add_adapter(engine_name(key), self._download(client, found.versions[key]))
            self.cards.update({k: version_card(v) for k, v in found.versions.items()})
            names = served_names(found.aliases, list(found.versions), self.alias)
            self.served.names = {**self.fixed, **names}  # one assignment: readers see old or new
            removed = [key for key in list(self.cards) if key not in found.versions]
            for key in removed:
                self._unload(key)
            self.skipped = found.skipped
        if added or removed:
            log.info("registry: added %s, removed %s", added or "none", removed or "none")
        return {"added": added, "removed": removed, "skipped": found.skipped,
                "models": self.served.model_ids()}

    def poll(self, every_s: float) -> threading.Thread:
        """Reload every `every_s` seconds in a daemon thread (errors are logged, not fatal)."""
        def loop() -> None:
            stop = threading.Event()
            while not stop.wait(every_s):
                try:
                    self.reload()
                except Exception as err:  # noqa: BLE001 (a registry outage must not stop serving)
                    log.warning("registry poll failed: %s", err)

        thread = threading.Thread(target=loop, name="tuneship-registry-poll", daemon=True)
        thread.start()
        return thread

    def _client(self) -> Any:
        return registry_client.client(self.tracking_uri, "following adapters")

    def _download(self, client: Any, version: Any) -> str:
        local, meta = registry_client.download(
            client, version, self.cache_dir / engine_name(adapter_refs.key(version)),
            self.tracking_uri)
        flavor = meta.flavors["transformers"]
        return str(local / flavor.get("peft_adaptor", "peft"))

    def _unload(self, key: str) -> None:
        try:
            self.served.engine.remove_adapter(engine_name(key))
        except Exception as err:  # noqa: BLE001 (in use: the next reload retries)
            log.info("keeping %s loaded for now: %s", key, err)
            return
        self.cards.pop(key, None)

