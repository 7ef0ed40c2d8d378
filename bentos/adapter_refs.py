"""Registry references to LoRA adapters, and what they resolve to in an MLflow registry.

A reference is `name@alias` (the version holding that alias), `name/3` (a version), or
`name@*` (every version holding an alias); `*` and `?` in `name` glob registered model names.
An adapter version is one whose tags name its base (`base_model.registered`, `base_model.sha256`:
see tuneship.tasks.causal_lm.registry); a version of another base, or not an adapter, is skipped
with the reason. `make bento` resolves the configured references to import the adapters into the
bento; the running service resolves them again to follow new versions and moved aliases.

Only the standard library here: the caller passes an `mlflow.MlflowClient`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

BASE_TAG = "base_model.registered"
SHA_TAG = "base_model.sha256"
_REF = re.compile(r"^(?P<name>[A-Za-z0-9*?][A-Za-z0-9_.:\-*?]*)(?:@(?P<alias>[A-Za-z0-9_\-*]+)"
                  r"|/(?P<version>[0-9]+))$")


@dataclass
class Resolved:
    versions: dict[str, Any] = field(default_factory=dict)  # "name/version" -> ModelVersion
    aliases: dict[str, str] = field(default_factory=dict)   # "name@alias" -> "name/version"
    skipped: dict[str, str] = field(default_factory=dict)   # reference or key -> why


def key(version: Any) -> str:
    """The served id of an adapter version: `name/version`."""
    return f"{version.name}/{version.version}"


def parse(ref: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of a reference; ValueError naming the accepted forms."""
    found = _REF.match(ref.strip())
    if not found:
        raise ValueError(f"bad adapter reference {ref!r}: use name@alias, name/<version> or "
                         f"name@* (every version holding an alias)")
    return found["name"], found["alias"], found["version"]


def resolve(client: Any, refs: list[str], base_sha: str | None = None) -> Resolved:
    """The adapter versions `refs` name now (of the base with `base_sha`, when given)."""
    out = Resolved()
    for ref in refs:
        name, alias, number = parse(ref)
        for model in _names(client, name):
            for version, aliases in _versions(client, model, alias, number, out, ref):
                reason = _not_servable(version, base_sha)
                if reason:
                    out.skipped[key(version)] = reason
                    continue
                out.versions[key(version)] = version
                for held in aliases:
                    out.aliases[f"{model}@{held}"] = key(version)
    return out


def _names(client: Any, pattern: str) -> list[str]:
    if not any(ch in pattern for ch in "*?"):
        return [pattern]
    return sorted(m.name for m in client.search_registered_models(max_results=1000)
                  if fnmatch.fnmatchcase(m.name, pattern))


def _versions(client: Any, name: str, alias: str | None, number: str | None, out: Resolved,
              ref: str) -> list[tuple[Any, list[str]]]:
    """(version, the aliases it holds) for one registered model and one reference."""
    try:
        held = dict(client.get_registered_model(name).aliases or {})  # alias -> version
    except Exception as err:  # noqa: BLE001 (MlflowException: RESOURCE_DOES_NOT_EXIST, ...)
        out.skipped[ref] = f"no registered model {name!r}: {_short(err)}"
        return []
    if number is not None:
        wanted = {number: [a for a, v in held.items() if str(v) == number]}
    elif alias == "*":
        wanted = {}
        for a, v in sorted(held.items()):
            wanted.setdefault(str(v), []).append(a)
    elif alias in held:
        wanted = {str(held[alias]): [alias]}
    else:
        out.skipped[ref] = f"{name} has no @{alias}"
        return []
    found = []
    for number_, aliases in wanted.items():
        try:
            found.append((client.get_model_version(name, number_), aliases))
        except Exception as err:  # noqa: BLE001
            out.skipped[f"{name}/{number_}"] = _short(err)
    return found


def _not_servable(version: Any, base_sha: str | None) -> str | None:
    tags = version.tags or {}
    if BASE_TAG not in tags:
        return "not a LoRA adapter version (no base_model.registered tag)"
    if base_sha and tags.get(SHA_TAG) != base_sha:
        return (f"trained on other base weights (SHA-256 {tags.get(SHA_TAG, '?')[:12]}..., "
                f"served base {base_sha[:12]}...)")
    return None


def _short(err: Exception) -> str:
    return str(err).splitlines()[0][:200]
