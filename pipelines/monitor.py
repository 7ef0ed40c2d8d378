"""Drift check of the served model: a window of the inference table against its training data.

    python pipelines/monitor.py                                  # @champion, the last 24 h
    python pipelines/monitor.py experiment=ag_news_minilm monitor.window_hours=1
    TUNESHIP_INFERENCE_LOG_DIR=/var/tuneship/log python pipelines/monitor.py monitor.version=3

Prints the summary as JSON (also logged to MLflow against the model version).
"""

import json

import hydra
from omegaconf import DictConfig

from tuneship import settings  # noqa: F401  (offline hub, config resolvers)
from tuneship.config import RegistryConfig, section
from tuneship.errors import exit_on_user_error
from tuneship.monitoring.monitor import MonitorConfig, check_config, run_monitor


@hydra.main(config_path="../conf", config_name="monitor", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    monitor = section(cfg, "monitor", MonitorConfig)
    check_config(monitor)
    print(json.dumps(run_monitor(monitor, section(cfg, "registry", RegistryConfig)), indent=2,
                     default=str))


if __name__ == "__main__":
    main()
