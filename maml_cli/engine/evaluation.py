"""Scoring an algorithm on held-out tasks: means with 95% confidence intervals, and divergence.

Plain SGD in the inner loop can blow up on an unlucky task (a sinusoid of large amplitude with five
support points, say): its loss grows by orders of magnitude with each step. One such task turns a
mean over 600 tasks into 1e24 while the other 599 are fine, so every score here comes with the
number of tasks that diverged, the median, and the mean over the tasks that did not diverge.

A task has *diverged* after ``k`` inner steps when its score is NaN or infinite, or, for a loss
(lower is better), when it is more than :data:`DIVERGENCE_FACTOR` times the task's own loss
before adaptation. An accuracy is bounded, so for it only a non-finite score counts (the
accuracy metric is NaN when the model's outputs are not finite).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: An adapted loss above this multiple of the task's pre-adaptation loss counts as diverged.
DIVERGENCE_FACTOR = 100.0


def display_scale(metric_name: str) -> tuple[float, str]:
    """How a metric is shown to a person (log lines, TensorBoard, printed tables): accuracy in
    percent everywhere, anything else as it is. JSON files keep the raw value (a fraction)."""
    return (100.0, "%") if metric_name == "accuracy" else (1.0, "")


@dataclass(frozen=True)
class Estimate:
    """Mean over tasks and the half-width of its 95% confidence interval (1.96 sigma / sqrt n)."""

    mean: float
    ci95: float

    @staticmethod
    def of(values: Tensor) -> Estimate:
        values = values.double()
        n = values.numel()
        if n == 0:
            return Estimate(math.nan, math.nan)
        std = values.std(unbiased=True).item() if n > 1 else 0.0
        return Estimate(values.mean().item(), 1.96 * std / math.sqrt(n))


def diverged(scores: Tensor, higher_is_better: bool) -> Tensor:
    """Which tasks have diverged after each number of steps: a bool tensor shaped like ``scores``
    (``[steps + 1, tasks]``, row 0 before adaptation); see the module's docstring for the rule."""
    out = ~torch.isfinite(scores)
    if not higher_is_better:
        before = scores[:1].double().abs()
        out |= scores.double() > DIVERGENCE_FACTOR * before
    return out


@dataclass(frozen=True)
class StepScore:
    """The scores of all tasks after one number of inner steps, summarised honestly."""

    steps: int
    mean: float  # over every task, diverged ones included: the headline, as published numbers are
    ci95: float
    median: float
    mean_stable: float  # over the tasks that did not diverge
    ci95_stable: float
    diverged_tasks: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "steps": self.steps,
            "mean": self.mean,
            "ci95": self.ci95,
            "median": self.median,
            "mean_stable": self.mean_stable,
            "ci95_stable": self.ci95_stable,
            "diverged_tasks": self.diverged_tasks,
        }


def summarise(scores: Tensor, higher_is_better: bool) -> list[StepScore]:
    """One :class:`StepScore` per row of ``scores`` (``[steps + 1, tasks]``)."""
    flags = diverged(scores, higher_is_better)
    rows = []
    for k, (row, bad) in enumerate(zip(scores.double(), flags)):
        everything, stable = Estimate.of(row), Estimate.of(row[~bad])
        # A NaN has no place in an order: it counts as the worst possible score.
        worst = -math.inf if higher_is_better else math.inf
        median = torch.nan_to_num(row, nan=worst, posinf=math.inf, neginf=-math.inf).median().item()
        rows.append(StepScore(k, everything.mean, everything.ci95, median, stable.mean, stable.ci95, int(bad.sum())))
    return rows


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
