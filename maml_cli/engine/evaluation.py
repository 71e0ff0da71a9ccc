"""Scoring an algorithm on held-out tasks, with 95% confidence intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Estimate:
    """Mean over tasks and the half-width of its 95% confidence interval (1.96 sigma / sqrt n)."""

    mean: float
    ci95: float

    @staticmethod
    def of(values: Tensor) -> Estimate:
        values = values.double()
        n = values.numel()
        std = values.std(unbiased=True).item() if n > 1 else 0.0
        return Estimate(values.mean().item(), 1.96 * std / math.sqrt(n))


def score_tasks(algorithm, tasks, split: str, num_tasks: int, steps: int, batch_size: int) -> Tensor:
    """``tasks.metric`` on ``num_tasks`` fixed tasks of ``split`` after 0..``steps`` inner steps.

    Returns ``[steps + 1, num_tasks]`` on the CPU; row 0 is before adaptation.
    """
    rows = [
        algorithm.evaluate(batch, tasks.metric, steps=steps).cpu()
        for batch in tasks.held_out(split, num_tasks, batch_size)
    ]
    return torch.cat(rows, dim=1)
