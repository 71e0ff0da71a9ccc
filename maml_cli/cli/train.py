"""``maml-train``: compose the config, build the run, train. Everything else is in the engine."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from maml_cli.cli import sweeps
from maml_cli.cli.common import reports_errors, run_cli
from maml_cli.config import config_dir, register_configs
from maml_cli.engine import Trainer


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
@reports_errors
def _train(cfg: DictConfig) -> float:
    run_dir = HydraConfig.get().runtime.output_dir
    metrics = Trainer(cfg, run_dir).fit()
    # What a Hydra sweeper optimises. Never NaN or inf (every validation diverged) nor missing:
    # Optuna cannot store it, so the worst value for the metric's direction stands in.
    best = metrics.get("best") or {}
    return sweeps.finite_objective(best.get("value"), cfg)


def main() -> None:
    register_configs()
    sweeps.register_resolvers()
    run_cli(_train)


if __name__ == "__main__":
    main()
