"""Standard ``nn.BatchNorm1d/2d/3d`` inside a functional, task-batched inner loop.

A model as users write it has batch-norm layers with running statistics
(``track_running_stats=True``, PyTorch's default). In training mode such a layer writes its
running statistics in place on every forward pass: under ``torch.func.vmap`` that is an error
(the buffers are not batched), and in a per-task loop it lets every inner step of every task
drift the meta-model's statistics (what learn2learn's ``clone_module`` does, since its clones
share the buffers).

The toolkit's convention, one for every model:

* ``batch`` (default, as the MAML paper and its code): every forward pass, in the inner loop, on
  the query set and at evaluation, normalises with the statistics of the batch at hand, i.e. one
  task's support or query set. The running statistics are never read nor written.
* ``running``: meta-training normalises with batch statistics as above; evaluation (validation,
  ``maml-eval``, deployment) normalises with the running statistics, during adaptation and on the
  query set. Only the outer loop updates them: after each meta-gradient, one forward pass of the
  meta-parameters per task over that task's support and query inputs, without gradients (see
  :meth:`MetaBatchNormMixin.update_running_stats`). Inner loops never write into the buffers.

:func:`prepare_batch_norms` gives the layers this behaviour by changing their class to a subclass
of their own (``nn.BatchNorm2d`` becomes :class:`MetaBatchNorm2d`), so parameters, buffers and
state-dict keys are the ones the user's model had, and ``isinstance`` checks still hold.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from maml_cli.models.layers import batch_statistics_norm

MODES = ("batch", "running")


class MetaBatchNormMixin:
    """The forward pass of the convention above; mixed into each ``nn.BatchNorm{1,2,3}d``."""

    #: ``batch`` or ``running``, set by :func:`prepare_batch_norms`.
    statistics: str = "batch"
    #: True only during the outer loop's no-grad pass of :func:`update_running_stats`.
    updating: bool = False

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if self.updating:
            self.update_running_stats(x)
        if self.statistics == "running" and not self.training and self.running_mean is not None:
            # Reads the buffers, never writes them: safe under vmap, differentiable in x and weights.
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return batch_statistics_norm(x, self.weight, self.bias, self.eps)

    @torch.no_grad()
    def update_running_stats(self, x: Tensor) -> None:
        """One momentum step of the running statistics from the batch ``x`` (outside ``vmap``)."""
        if self.running_mean is None:
            return
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        F.batch_norm(x, self.running_mean, self.running_var, None, None, True, momentum, self.eps)


class MetaBatchNorm1d(MetaBatchNormMixin, nn.BatchNorm1d):
    pass


class MetaBatchNorm2d(MetaBatchNormMixin, nn.BatchNorm2d):
    pass


class MetaBatchNorm3d(MetaBatchNormMixin, nn.BatchNorm3d):
    pass


_SWAPS = {nn.BatchNorm1d: MetaBatchNorm1d, nn.BatchNorm2d: MetaBatchNorm2d, nn.BatchNorm3d: MetaBatchNorm3d}


@torch.no_grad()
def update_running_stats(layers: list[MetaBatchNormMixin], forward, inputs: Iterable[Tensor]) -> None:
    """The outer loop's update: ``forward(x)`` (the meta-parameters' forward pass) on each batch of
    ``inputs``, one per task, each a momentum step of every layer's running statistics."""
    if not any(layer.statistics == "running" for layer in layers):
        return
    for layer in layers:
        layer.updating = True
    try:
        for x in inputs:
            forward(x)
    finally:
        for layer in layers:
            layer.updating = False


def prepare_batch_norms(model: nn.Module, statistics: str) -> list[MetaBatchNormMixin]:
    """Give every standard batch-norm layer of ``model`` the toolkit's convention; returns them.

    ``statistics`` is ``batch`` or ``running`` (see the module docstring). ``running`` needs at
    least one layer that tracks running statistics.
    """
    if statistics not in MODES:
        raise ValueError(f"model.batch_norm must be one of {MODES}, got {statistics!r}")
    layers = []
    for module in model.modules():
        swap = _SWAPS.get(type(module))
        if swap is not None:
            module.__class__ = swap
        if isinstance(module, MetaBatchNormMixin):
            module.statistics = statistics
            layers.append(module)
    if statistics == "running" and not any(layer.running_mean is not None for layer in layers):
        raise ValueError(
            "model.batch_norm=running needs nn.BatchNorm layers with running statistics, and this model has "
            "none (the built-in models normalise with batch statistics only); use model.batch_norm=batch"
        )
    return layers
