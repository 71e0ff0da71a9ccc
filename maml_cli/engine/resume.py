"""The engine's side of resuming: the optimizer state as the config says, and the exact command.

``optimizer.load_state_dict`` restores the saved learning rate, betas, momentum and weight decay
into every parameter group, and the schedule's state restores its base rates, so a config that
changed at resume (allowed by ``trainer.resume_override=true``) would be recorded but not used.
:func:`load_optimizer_state` loads the state and then puts the config's values back; without a
change it sets the very numbers that were saved, so an exact resume stays bit for bit exact.
"""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from maml_cli.engine.optim import _SCHEDULE_KEYS

log = logging.getLogger("maml_cli")


def resume_command(run_dir: str | Path) -> str:
    """The command that continues the run in ``run_dir``, quoted for the shell and for Hydra."""
    path = str(Path(run_dir).absolute())
    if not re.fullmatch(r"[\w/.\-+@:]+", path):  # Hydra's grammar reads ',' '=' ' ' and quotes itself
        path = "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"maml-train {shlex.quote('hydra.run.dir=' + path)} trainer.resume=auto"


def _hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The optimizer's constructor arguments in ``cfg`` (as :func:`~maml_cli.engine.optim.build_optimizer`)."""
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items() if k not in _SCHEDULE_KEYS}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    state: dict[str, Any],
    cfg: DictConfig,
) -> None:
    """Restore the optimizer and schedule from a checkpoint, with ``cfg.optimizer``'s hyperparameters.

    A checkpoint of another optimizer class (Adam's moments for SGD) has no state this one can use:
    the optimizer starts afresh, with a warning, instead of failing at its first step.
    """
    saved = ((state.get("config") or {}).get("optimizer") or {}).get("_target_")
    if saved is not None and saved != cfg.optimizer._target_:
        log.warning(
            "the checkpoint's optimizer is %s, this run's %s: its state (moments, momentum) is not "
            "loaded, the optimizer starts afresh",
            saved,
            cfg.optimizer._target_,
        )
    else:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    hyper = _hyperparameters(cfg.optimizer)
    for group in optimizer.param_groups:
        group.update(hyper)
        group["initial_lr"] = hyper["lr"]
    scheduler.base_lrs = [hyper["lr"] for _ in optimizer.param_groups]
    # What LambdaLR.step() computes for the current step: the saved rate when nothing changed.
    rates = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates
