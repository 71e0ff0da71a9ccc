"""``maml-train``: compose the config, build the run, train. Everything else is in the engine."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from maml_cli.cli.common import reports_errors, run_cli
from maml_cli.config import config_dir, register_configs
from maml_cli.engine import Trainer


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
@reports_errors
def _train(cfg: DictConfig) -> float:
    run_dir = HydraConfig.get().runtime.output_dir
    metrics = Trainer(cfg, run_dir).fit()
    return metrics["best"]["value"]  # what a Hydra sweeper optimises


def main() -> None:
    register_configs()
    run_cli(_train)


if __name__ == "__main__":
    main()
