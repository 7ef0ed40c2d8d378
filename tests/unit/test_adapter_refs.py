"""Registry references to adapters (bentos/adapter_refs.py) against a real MLflow registry, and
the served ids they give (bentos/follow.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tuneship.settings import bento_module

pytestmark = pytest.mark.unit
refs = bento_module("adapter_refs")
SHA, OTHER = "a" * 64, "b" * 64


@pytest.fixture
def client(tmp_path) -> MlflowClient:
    """`poet` v1 @champion, v2 @challenger, v3 (no alias), v4 of another base @old;
    `prose` v1 @champion; `merged` v1 @champion is not an adapter."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    source = tmp_path / "artifact"
    source.mkdir()

    def version(name: str, sha: str | None, alias: str | None = None) -> None:
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name)
        tags = {} if sha is None else {refs.BASE_TAG: "base/1", refs.SHA_TAG: sha}
        v = client.create_model_version(name, str(source), tags=tags)
        if alias:
            client.set_registered_model_alias(name, alias, v.version)

    version("poet", SHA, "champion")
    version("poet", SHA, "challenger")
    version("poet", SHA)
    version("poet", OTHER, "old")
    version("prose", SHA, "champion")
    version("merged", None, "champion")
    return client


def test_an_alias_names_the_version_holding_it(client):
    found = refs.resolve(client, ["poet@champion"], SHA)
    assert list(found.versions) == ["poet/1"]
    assert found.aliases == {"poet@champion": "poet/1"}


def test_star_names_every_aliased_version_of_the_same_base(client):
    found = refs.resolve(client, ["poet@*"], SHA)
    assert sorted(found.versions) == ["poet/1", "poet/2"]
    assert found.aliases == {"poet@champion": "poet/1", "poet@challenger": "poet/2"}
    assert "other base weights" in found.skipped["poet/4"]  # @old: trained on another base


def test_a_version_number_and_name_globs(client):
    assert list(refs.resolve(client, ["poet/3"], SHA).versions) == ["poet/3"]
    found = refs.resolve(client, ["p*@champion"], SHA)
    assert sorted(found.versions) == ["poet/1", "prose/1"]


def test_what_cannot_be_served_is_skipped_with_the_reason(client):
    found = refs.resolve(client, ["merged@champion", "poet@gone", "nobody@champion"], SHA)
    assert not found.versions
    assert "not a LoRA adapter" in found.skipped["merged/1"]
    assert found.skipped["poet@gone"] == "poet has no @gone"
    assert "no registered model 'nobody'" in found.skipped["nobody@champion"]


@pytest.mark.parametrize("ref", ["poet", "poet@", "poet/x", "@champion", "po et@champion"])
def test_a_malformed_reference_is_a_clear_error(ref):
    with pytest.raises(ValueError, match="name@alias, name/<version> or name@\\*"):
        refs.parse(ref)


def test_served_ids_bare_name_is_the_served_alias(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(refs.__file__).parent))  # as `bentoml serve` runs it
    follow = bento_module("follow")
    names = follow.served_names({"poet@champion": "poet/1", "poet@challenger": "poet/2",
                                 "my.model@champion": "my.model/7"},
                                ["poet/1", "poet/2", "my.model/7"], "champion")
    assert names == {"poet/1": "poet/1", "poet/2": "poet/2", "poet@champion": "poet/1",
                     "poet@challenger": "poet/2", "poet": "poet/1",
                     "my.model/7": "my_model/7", "my.model@champion": "my_model/7",
                     "my.model": "my_model/7"}
