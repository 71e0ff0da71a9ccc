"""Picking the training device from ``trainer.device``."""

from __future__ import annotations

import torch

from maml_cli.errors import ConfigError


def resolve_device(choice: str) -> torch.device:
    """``auto`` is the first GPU when one is visible, else the CPU."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={choice} but no CUDA GPU is visible: use trainer.device=cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"trainer.device={choice} but only {torch.cuda.device_count()} GPU(s) are visible")
    return device
