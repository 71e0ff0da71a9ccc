"""``maml-train``: compose the config, build the run, train. Everything else is in the engine.

Under ``torchrun`` every rank runs this same command: :mod:`maml_cli.distributed` quiets the ranks
other than 0 before Hydra starts, joins the ranks, and gives them rank 0's run dir.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from maml_cli import distributed
from maml_cli.cli import resume, run_start, sweeps
from maml_cli.cli.common import reports_errors, run_cli
from maml_cli.config import config_dir, register_configs
from maml_cli.engine import Trainer, run_dir


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
@reports_errors
def _train(cfg: DictConfig) -> float:
    cfg = resume.resumed_config(cfg)
    # One process, or every rank of a torchrun job in rank 0's run dir, which rank 0 locks.
    with distributed.joined(cfg) as world, world.run_dir(HydraConfig.get().runtime.output_dir, run_dir.locked) as out:
        metrics = Trainer(cfg, out, world).fit()
    # What a Hydra sweeper optimises. Never NaN or inf (every validation diverged) nor missing:
    # Optuna cannot store it, so the worst value for the metric's direction stands in.
    best = metrics.get("best") or {}
    return sweeps.finite_objective(best.get("value"), cfg)


def main() -> None:
    register_configs()
    sweeps.register_resolvers()
    run_cli(distributed.report_rank_errors(_main))


def _main() -> None:
    argv = distributed.before_hydra(sys.argv[1:])  # torchrun's ranks other than 0 write nothing
    if not distributed.is_follower():  # rank 0 holds the job's lock
        run_start.lock_explicit_run_dir(argv)
    argv = resume.prepare_argv(argv)
    sys.argv[1:] = distributed.follower_run_dir(argv)
    _train()


if __name__ == "__main__":
    main()
