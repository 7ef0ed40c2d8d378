"""Every preset composes and validates; bad values fail early with a clear message."""

import pytest
from hydra.errors import ConfigCompositionException

from tests.conftest import CONF_DIR, compose_config
from tuneship.config import TrainConfig, section, validate_all
from tuneship.errors import TuneshipError

pytestmark = pytest.mark.unit
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    validate_all(cfg)
    assert cfg.experiment_name == experiment
    assert cfg.paths.work_dir.endswith(f"/{experiment}")


def test_default_experiment_is_sst2_minilm():
    cfg = compose_config()
    assert cfg.experiment_name == "sst2_minilm"
    assert cfg.data.name == "sst2" and cfg.model.name == "all-MiniLM-L6-v2"


def test_overrides_reach_the_sections():
    cfg = compose_config(["experiment=smoke", "train.lr=0.01", "data.max_length=16"])
    assert section(cfg, "train", TrainConfig).lr == 0.01
    assert cfg.data.max_length == 16


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=abc", "train.lr"),
        ("train.lr=-1", "train.lr"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.precision=fp8", "train.precision"),
        ("data.test_size=0.7", "data.test_size"),
        ("data.validation_size=0.45 data.test_size=0.45", "leave at least 20%"),
        ("train.save_steps=7", "multiple of train.eval_steps"),
        ("registry.model_name=bad/name", "registry.model_name"),
    ],
)
def test_bad_values_name_the_key(override, message):
    cfg = compose_config(["experiment=smoke", *override.split()])
    with pytest.raises(TuneshipError, match="bad config value") as err:
        validate_all(cfg)
    assert message in str(err.value)


def test_unknown_key_and_group_are_hydra_errors():
    with pytest.raises(ConfigCompositionException, match="learning_rate"):
        compose_config(["train.learning_rate=1e-4"])
    with pytest.raises(ConfigCompositionException, match="nope"):
        compose_config(["experiment=nope"])
