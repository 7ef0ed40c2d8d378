"""Secrets never reach MLflow params or the logged config."""

import pytest
from omegaconf import OmegaConf

from tuneship.redact import MASK, redact, redact_text
from tuneship.tracking_params import config_params

pytestmark = pytest.mark.unit


def test_uri_passwords_are_masked():
    assert redact_text("postgresql://mlflow:s3cr3t@db:5432/mlflow") == \
        f"postgresql://mlflow:{MASK}@db:5432/mlflow"
    assert redact_text("https://host/path?x=1") == "https://host/path?x=1"
    assert redact_text("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_secret_keys_are_masked_at_any_depth():
    cfg = {"registry": {"tracking_uri": "http://u:pw@h"}, "serve": {"api_key": "abc"},
           "model": {"hub_token": "hf_x", "name": "m", "revision": None}}
    out = redact(cfg)
    assert out["registry"]["tracking_uri"] == f"http://u:{MASK}@h"
    assert out["serve"]["api_key"] == MASK and out["model"]["hub_token"] == MASK
    assert out["model"]["name"] == "m" and out["model"]["revision"] is None


def test_params_are_redacted():
    cfg = OmegaConf.create({"experiment_name": "x", "seed": 1,
                            "data": {"source": "https://me:pw@host/d.csv"},
                            "model": {"auth_token": "hf_secret"}, "train": {}, "eval": {}})
    params = config_params(cfg)
    assert "pw" not in params["data.source"] and params["model.auth_token"] == MASK


def test_ordinary_keys_that_mention_tokens_are_kept():
    assert redact({"tokenizer": "pkg:x", "max_tokens": 5}) == {"tokenizer": "pkg:x", "max_tokens": 5}
