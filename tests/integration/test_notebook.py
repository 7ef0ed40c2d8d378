"""The review notebook runs top to bottom against a real store."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_review_notebook_runs(lifecycle, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{lifecycle['root'] / 'mlflow.db'}")
    monkeypatch.setenv("TUNESHIP_MODEL_NAME", "tuneship-smoke")
    nb = nbformat.read(ROOT / "notebooks" / "model_review.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the confusion matrix
    assert os.environ["TUNESHIP_MODEL_NAME"] == "tuneship-smoke"
