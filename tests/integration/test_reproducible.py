"""Same seed, same data → the same model: metrics and weights are identical on CPU, for both
tasks (everything random is seeded before the model is built)."""

import hashlib
from pathlib import Path

import pytest

from tests.conftest import compose_config
from tuneship.stages import run_stages

pytestmark = pytest.mark.integration


def weights_digest(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("experiment", ["smoke", "smoke_lm"])
def test_two_runs_with_one_seed_give_identical_metrics_and_weights(workspace, experiment):
    outcomes = []
    for name in ("first", "second"):
        cfg = compose_config([f"experiment={experiment}", f"experiment_name={experiment}_{name}",
                              "train.resume=never"])
        report = run_stages(cfg, ("preprocess", "train", "evaluate"))["evaluate"]
        outcomes.append((report["metrics"], weights_digest(Path(cfg.paths.work_dir) / "model")))
    assert outcomes[0] == outcomes[1]
    other = compose_config([f"experiment={experiment}", f"experiment_name={experiment}_seed7",
                            "train.resume=never", "seed=7"])
    run_stages(other, ("preprocess", "train"))
    assert weights_digest(Path(other.paths.work_dir) / "model") != outcomes[0][1]  # seed matters
