"""Fine-tune the model (checkpoints every train.save_steps; train.resume=auto continues).

    python pipelines/train.py                       # default experiment (sst2_minilm)
    python pipelines/train.py experiment=smoke      # any preset, any override
"""

import hydra
from omegaconf import DictConfig

from tuneship.errors import exit_on_user_error
from tuneship.stages import run_stages


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    print(run_stages(cfg, ("train",))["train"])


if __name__ == "__main__":
    main()
