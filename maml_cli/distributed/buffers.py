"""Buffers that a meta-step changes (batch-norm running statistics), made equal on every rank.

Each rank runs ``meta_backward`` on its share of the tasks, and an algorithm may update buffers
there: with ``model.batch_norm=running`` every standard batch-norm layer takes one momentum step
per task (:func:`maml_cli.models.batch_norm.update_running_stats`), and MAML++'s per-step
statistics take one step per inner step from the mean over the tasks' batch statistics. After the
step the ranks must hold the same buffers, and the ones one process would have held with the whole
meta-batch:

* a standard batch-norm layer's running mean and variance: rank ``r`` took ``n`` momentum steps
  ``s <- (1 - m) s + m x`` from ``s0`` over its tasks, in the order one process takes them after
  the tasks of ranks ``0..r-1``. Each step is linear, so one process's result is
  ``(1 - m)^(W n) s0 + sum_r (1 - m)^((W - 1 - r) n) (s_r - (1 - m)^n s0)``, computed here from each
  rank's ``s_r`` in float64 (for ``momentum=None``, the cumulative average, likewise from counts);
* integer buffers (``num_batches_tracked``): the increments of all ranks, added;
* any other floating buffer (MAML++'s per-step statistics, a user's): the mean of the ranks'
  increments. MAML++ moves its statistics once per step towards the mean over tasks, which is
  linear in that mean, so with equal shares this is what one process computes.

Buffers that no rank changed come out bit for bit as they were.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from maml_cli.models.batch_norm import MetaBatchNormMixin


class BufferSync:
    """Snapshot the buffers of ``module`` before a meta-step; after it, :meth:`contribute` this
    rank's terms to a sum over ranks and :meth:`apply` the sums."""

    def __init__(self, module: nn.Module, rank: int, size: int) -> None:
        self.rank, self.size = rank, size
        self.buffers: list[Tensor] = [b for _, b in module.named_buffers() if b.is_floating_point() or _is_int(b)]
        position = {id(b): i for i, b in enumerate(self.buffers)}
        # Index of a running mean or variance -> (its layer, the index of the layer's counter).
        self.ema: dict[int, tuple[MetaBatchNormMixin, int]] = {}
        for layer in module.modules():
            if isinstance(layer, MetaBatchNormMixin) and layer.running_mean is not None:
                count = position.get(id(layer.num_batches_tracked))
                for stat in (layer.running_mean, layer.running_var):
                    if id(stat) in position and count is not None:
                        self.ema[position[id(stat)]] = (layer, count)
        self.before: list[Tensor] = []
        self.steps: dict[int, int] = {}  # counter index -> this rank's momentum steps in the meta-step

    def __bool__(self) -> bool:
        return bool(self.buffers)

    def snapshot(self) -> None:
        self.before = [b.detach().clone() for b in self.buffers]

    def contribute(self) -> list[Tensor]:
        """This rank's term of each buffer's sum over ranks (see the module docstring)."""
        self.steps = {count: int(self.buffers[count]) - int(self.before[count]) for _, count in self.ema.values()}
        terms = []
        for i, (now, old) in enumerate(zip(self.buffers, self.before)):
            if i not in self.ema:
                terms.append(now.detach() - old)
                continue
            layer, count = self.ema[i]
            start, steps = int(self.before[count]), self.steps[count]
            if layer.momentum is None:  # the cumulative average over start + steps batches
                terms.append((start + steps) * now.double() - start * old.double())
            else:
                keep = 1.0 - float(layer.momentum)
                later = (self.size - 1 - self.rank) * steps  # the steps the ranks after this one take
                terms.append(keep**later * (now.double() - keep**steps * old.double()))
        return terms

    @torch.no_grad()
    def apply(self, sums: list[Tensor]) -> None:
        """Set every buffer from the sums over ranks of :meth:`contribute`'s terms."""
        for i, (buffer, old, total) in enumerate(zip(self.buffers, self.before, sums)):
            if i in self.ema:
                continue
            buffer.copy_(old + total if _is_int(buffer) else old + total / self.size)
        for i, (layer, count) in self.ema.items():
            start, steps = int(self.before[count]), self.steps[count]
            all_steps = int(sums[count])
            if all_steps != self.size * steps:
                raise RuntimeError(
                    f"the ranks took unequal numbers of batch-norm steps ({all_steps} in all, {steps} here)"
                )
            if all_steps == 0:
                continue
            old = self.before[i].double()
            if layer.momentum is None:
                value = (start * old + sums[i]) / (start + all_steps)
            else:
                value = (1.0 - float(layer.momentum)) ** all_steps * old + sums[i]
            self.buffers[i].copy_(value.to(self.buffers[i].dtype))


def _is_int(tensor: Tensor) -> bool:
    return tensor.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
