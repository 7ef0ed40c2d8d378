"""Log the model to MLflow's registry and give the new version the @challenger alias.

    python pipelines/register.py                       # default experiment (sst2_minilm)
    python pipelines/register.py experiment=smoke      # any preset, any override
"""

import hydra
from omegaconf import DictConfig

from tuneship.errors import exit_on_user_error
from tuneship.stages import run_stages


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    print(run_stages(cfg, ("register",))["register"])


if __name__ == "__main__":
    main()
