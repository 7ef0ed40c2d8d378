"""The service's MLflow registry: one client per tracking URI and one way to download a version.

Used where the running service loads registered versions itself (job classifiers by name in
`classifiers.Named`, adapters followed in `follow.Follower`). mlflow is imported only here and
only when called, so a service that never asks the registry does not need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class RegistryUnavailable(RuntimeError):
    """No registry to ask (no tracking URI, no mlflow package)."""


def client(tracking_uri: str | None, purpose: str) -> Any:
    """An `MlflowClient` on `tracking_uri` for both tracking and registry; `purpose` names why
    in the RegistryUnavailable raised when there is none."""
    if not tracking_uri:
        raise RegistryUnavailable(f"no registry for {purpose}: set MLFLOW_TRACKING_URI in the "
                                  "service's environment")
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise RegistryUnavailable(f"{purpose} needs the mlflow package in the service's "
                                  "environment") from None
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def download(registry: Any, version: Any, into: Path, tracking_uri: str) -> tuple[Path, Any]:
    """Download model `version` (a ModelVersion) into `into`; its local folder and MLmodel.

    The storage location is asked of `registry` itself: a `models:/` URI would be resolved
    against the process's default registry instead.
    """
    import mlflow

    uri = registry.get_model_version_download_uri(version.name, version.version)
    into.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=str(into), tracking_uri=tracking_uri))
    return local, mlflow.models.Model.load(str(local))
