"""``maml-train``: compose the config, build the run, train. Everything else is in the engine."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from maml_cli.cli import resume, run_start, sweeps
from maml_cli.cli.common import reports_errors, run_cli
from maml_cli.config import config_dir, register_configs
from maml_cli.engine import Trainer, run_dir


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
@reports_errors
def _train(cfg: DictConfig) -> float:
    output_dir = HydraConfig.get().runtime.output_dir
    with run_dir.locked(output_dir):
        metrics = Trainer(resume.resumed_config(cfg), output_dir).fit()
    # What a Hydra sweeper optimises. Never NaN or inf (every validation diverged) nor missing:
    # Optuna cannot store it, so the worst value for the metric's direction stands in.
    best = metrics.get("best") or {}
    return sweeps.finite_objective(best.get("value"), cfg)


def main() -> None:
    register_configs()
    sweeps.register_resolvers()
    run_cli(_main)


def _main() -> None:
    run_start.lock_explicit_run_dir(sys.argv[1:])
    sys.argv[1:] = resume.prepare_argv(sys.argv[1:])
    _train()


if __name__ == "__main__":
    main()
