"""(Named eval.py, not evaluate.py: a script folder shadows packages, and `evaluate` is HF's.)
Score the trained model on the test split; log metrics, plots and reports.

    python pipelines/eval.py                       # default experiment (sst2_minilm)
    python pipelines/eval.py experiment=smoke      # any preset, any override
"""

import hydra
from omegaconf import DictConfig

from tuneship.errors import exit_on_user_error
from tuneship.stages import run_stages


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    print(run_stages(cfg, ("evaluate",))["evaluate"])


if __name__ == "__main__":
    main()
