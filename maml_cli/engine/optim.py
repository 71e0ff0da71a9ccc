"""The meta-optimizer and its learning-rate schedule, from the ``optimizer`` config group."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

# Keys of the optimizer group that describe the schedule rather than the torch.optim class.
_SCHEDULE_KEYS = ("_target_", "schedule", "min_lr", "warmup_steps")


def build_optimizer(cfg: DictConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in _SCHEDULE_KEYS}
    for key, value in kwargs.items():
        if isinstance(value, list):
            kwargs[key] = tuple(value)
    return get_class(cfg._target_)(params, **kwargs)


def build_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then a constant rate, or a cosine (MAML++'s CA) or linear (Reptile's
    annealed outer step) decay to ``min_lr`` at ``max_steps``.

    The factor is a pure function of the step, so a resumed run with the same ``max_steps``
    follows the same schedule exactly.
    """
    base_lr = float(cfg.lr)
    warmup = int(cfg.warmup_steps)
    floor = float(cfg.min_lr) / base_lr
    schedule = str(getattr(cfg.schedule, "value", cfg.schedule))  # an Enum from the schema, a str from a checkpoint

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        decay = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return floor + (1.0 - floor) * decay

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
