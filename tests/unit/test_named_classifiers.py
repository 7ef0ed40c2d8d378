"""Job classifiers by registered name (bentos/classifiers.py `Named`) against a real MLflow
registry: which version a name resolves to, what is refused, and the least-recently-used bound.
The loader records what it was asked for instead of downloading weights (the download and load
run in tests/integration/test_platform.py against a served bento)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tests.bento_modules import bento

pytestmark = pytest.mark.unit
classifiers = bento("classifiers")


@pytest.fixture
def named(tmp_path):
    """`ft-a` v1 @champion, v2 (newest); `ft-b` v1, v2 @challenger; `other` v1 @champion."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    source = tmp_path / "artifact"
    source.mkdir()
    for name, aliases in (("ft-a", ["champion", None]), ("ft-b", [None, "challenger"]),
                          ("other", ["champion"])):
        client.create_registered_model(name)
        for alias in aliases:
            v = client.create_model_version(name, str(source))
            if alias:
                client.set_registered_model_alias(name, alias, v.version)
    loads: list[str] = []

    def loader(version, alias: str):
        loads.append(f"{version.name}/{version.version}")
        return classifiers.Entry(scorer=None, ref={"name": version.name,
                                                   "version": str(version.version),
                                                   "alias": alias, "bento_model": ""})

    out = classifiers.Named(uri, tmp_path / "cache", capacity=2, alias="champion", device="cpu",
                            token_budget=1024, pass_cost=0, loader=loader, resolve_ttl_s=0)
    out.loads = loads
    return out


def test_a_name_is_its_champion_else_its_newest_version(named):
    assert named.get("ft-a").ref == {"name": "ft-a", "version": "1", "alias": "champion",
                                     "bento_model": ""}
    assert named.get("ft-b").ref["version"] == "2"  # no @champion: the newest
    assert named.get("ft-a/2").ref["version"] == "2"
    assert named.get("ft-b@challenger").ref == {"name": "ft-b", "version": "2",
                                                "alias": "challenger", "bento_model": ""}


@pytest.mark.parametrize("model", ["other", "other@champion", "ft-missing", "ft-a/9",
                                   "ft-a@nope", "ft-a/1/2", "ft-a@", "../ft-a"])
def test_unknown_or_non_job_models_are_refused(named, model):
    with pytest.raises(classifiers.UnknownModel):
        named.get(model)
    assert named.loads == []


def test_loaded_versions_are_bounded_least_recently_used_first(named):
    named.get("ft-a")
    named.get("ft-b")
    named.get("ft-a")            # ft-a/1 is the most recent now
    named.get("ft-a/2")          # a third version: ft-b/2 (least recently used) is dropped
    assert named.loaded() == ["ft-a/1", "ft-a/2"]
    named.get("ft-a@champion")   # loaded already: no second load
    assert named.loads == ["ft-a/1", "ft-b/2", "ft-a/2"]
    named.get("ft-b")
    assert named.loads[-1] == "ft-b/2" and named.loaded() == ["ft-a/1", "ft-b/2"]


def test_no_registry_is_a_clear_unavailable(tmp_path):
    named = classifiers.Named(None, tmp_path, capacity=1, alias="champion", device="cpu",
                              token_budget=1024, pass_cost=0)
    with pytest.raises(classifiers.RegistryUnavailable, match="MLFLOW_TRACKING_URI"):
        named.get("ft-a")
