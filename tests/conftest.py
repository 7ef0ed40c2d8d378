"""Shared fixtures: an isolated workspace (outputs, MLflow store, caches) and Hydra composition."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import tuneship.settings  # noqa: F401  (offline hub variables, config resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
SHARED_DATA = Path(os.environ.get("TUNESHIP_DATA_DIR", ROOT.parent / "shared" / "data"))


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose `conf/` as the pipelines would, with command-line style overrides."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides or [])


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Outputs, a fresh SQLite MLflow store and caches under a temporary folder."""
    monkeypatch.setenv("TUNESHIP_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("TUNESHIP_CACHE", str(ROOT / ".cache"))  # shared: datasets' arrow cache
    monkeypatch.setenv("TUNESHIP_ARTIFACTS", str(tmp_path / "mlartifacts"))
    return tmp_path


@pytest.fixture
def make_cfg(workspace: Path) -> Callable[..., DictConfig]:
    """Compose a config inside the workspace."""
    return lambda *overrides: compose_config(list(overrides))


@pytest.fixture(scope="session")
def session_workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Like `workspace`, shared by a module's expensive end-to-end runs."""
    path = tmp_path_factory.mktemp("lifecycle")
    env = {"TUNESHIP_OUTPUT_DIR": str(path / "outputs"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{path / 'mlflow.db'}",
           "TUNESHIP_ARTIFACTS": str(path / "mlartifacts"),
           "TUNESHIP_CACHE": str(ROOT / ".cache")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield path
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def lifecycle(session_workspace: Path) -> dict:
    """Three `smoke` pipelines against one store: v1 champion, v2 fails a strict gate, v3 passes."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from tuneship.stages import run_stages

    runs = [run_stages(compose_config(["experiment=smoke"])),
            run_stages(compose_config(["experiment=smoke", "registry.gate.min_improvement=0.5"])),
            run_stages(compose_config(["experiment=smoke"]))]
    mlflow.set_tracking_uri(f"sqlite:///{session_workspace / 'mlflow.db'}")
    return {"runs": runs, "client": MlflowClient(), "root": session_workspace}
