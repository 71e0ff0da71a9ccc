"""What a task distribution hands to an algorithm: a meta-batch of few-shot episodes.

Every task distribution (sinusoid regression now, image classification later) produces the same
:class:`TaskBatch` of tensors with a leading task dimension, already on the training device, so an
algorithm never sees file formats, samplers or data loaders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

#: Maps (predictions, targets) of one task to a scalar.
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class TaskBatch:
    """A meta-batch of ``T`` episodes: support sets to adapt on, query sets to score on.

    Shapes: ``support_x`` is ``[T, S, *input_shape]``, ``support_y`` is ``[T, S, *target_shape]``,
    and likewise ``query_x`` / ``query_y`` with ``Q`` points per task.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def slice(self, start: int, stop: int) -> TaskBatch:
        """Tasks ``start:stop`` of the batch (views, no copy)."""
        return TaskBatch(
            self.support_x[start:stop],
            self.support_y[start:stop],
            self.query_x[start:stop],
            self.query_y[start:stop],
        )


class TaskDistribution(Protocol):
    """The interface the engine relies on; see :class:`~maml_cli.data.sinusoid.SinusoidTasks`.

    ``loss`` is what the inner and outer loops minimise; ``metric`` is what validation and
    ``maml-eval`` report (named ``metric_name``; ``higher_is_better`` picks the best checkpoint).
    """

    metric_name: str
    higher_is_better: bool

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor: ...

    def metric(self, prediction: Tensor, target: Tensor) -> Tensor: ...

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        """A fresh meta-batch from the training distribution, drawn with ``generator``."""
        ...

    def held_out(self, split: str, num_tasks: int, batch_size: int) -> Iterator[TaskBatch]:
        """The same ``num_tasks`` held-out tasks of ``split`` (``"val"`` or ``"test"``) every time,
        in batches of at most ``batch_size``; which tasks they are must not depend on
        ``batch_size``. Only a batch at a time needs to be in memory."""
        ...
