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


def _predictions(out: Tensor, y: Tensor) -> Tensor:
    return out


def average_predictions(outputs: list[Tensor], metric_name: str) -> Tensor:
    """Combine members' outputs: class probabilities are averaged for classification (the
    MAML++ code ensembles its top validation models this way), raw outputs for regression."""
    if metric_name == "accuracy":
        return torch.stack([out.softmax(dim=-1) for out in outputs]).mean(dim=0)
    return torch.stack(outputs).mean(dim=0)


def score_ensemble(algorithms, tasks, split: str, num_tasks: int, steps: int, batch_size: int) -> Tensor:
    """Like :func:`score_tasks` for an ensemble: each member adapts to each task on its own, and
    the metric is taken on the members' averaged query predictions after each step."""
    metric = torch.func.vmap(tasks.metric)
    rows = []
    for batch in tasks.held_out(split, num_tasks, batch_size):
        outputs = [algorithm.evaluate(batch, _predictions, steps=steps) for algorithm in algorithms]
        combined = average_predictions(outputs, tasks.metric_name)
        rows.append(torch.stack([metric(step_out, batch.query_y) for step_out in combined]).cpu())
    return torch.cat(rows, dim=1)
