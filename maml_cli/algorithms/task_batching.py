"""How the tasks of a meta-batch are adapted: all at once under ``vmap``, or one after another.

Both strategies compute the same meta-gradient (the tests hold them to it); they differ in speed
and memory, and which one wins depends on the device and the model. Measured on a 2-core CPU
(see ``scripts/bench_task_batching.py`` and the README): for the sinusoid MLP, ``vmap`` is about
8x faster than a per-task loop, because the work per task is tiny and Python and kernel-launch
overhead dominate; for a Conv-4 on 28x28 images ``vmap`` is 2-3x slower and takes about 8x the
memory, because vmapped convolutions become grouped convolutions. On GPUs, where small kernels are
launch-bound, batching the tasks is the expected winner.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from maml_cli.models.layers import has_convolutions

TaskBatching = Literal["vmap", "loop"]
CHOICES = ("auto", "vmap", "loop")


def resolve_task_batching(choice: str, model: nn.Module, device: torch.device) -> TaskBatching:
    """Turn ``auto`` into ``vmap`` or ``loop`` for this model on this device."""
    if choice not in CHOICES:
        raise ValueError(f"task_batching must be one of {CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice  # type: ignore[return-value]
    if device.type != "cpu":
        return "vmap"
    return "loop" if has_convolutions(model) else "vmap"
