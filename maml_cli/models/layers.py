"""Layers that behave correctly inside a functional, task-batched inner loop."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

try:  # tells whether a tensor is one slice of a torch.func.vmap batch
    from torch._C._functorch import is_batchedtensor as _is_batched
except ImportError:  # pragma: no cover - then always take the path that is exact under vmap

    def _is_batched(x: Tensor) -> bool:
        return True


def batch_statistics_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """Normalise ``x`` (``[N, C, ...]``) with its own per-channel statistics; no running stats.

    Inside ``torch.func.vmap`` it is written in plain tensor operations: native ``batch_norm`` has
    given wrong second-order gradients under torch.func transforms (pytorch/functorch#534), while
    these ops are exact by construction. Outside ``vmap`` (the per-task loop) the native kernel
    computes the same thing about 1.4x faster on CPU; the tests hold both paths to the same
    meta-gradient.
    """
    if not _is_batched(x):
        return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)
    dims = (0, *range(2, x.dim()))
    shape = (1, -1, *([1] * (x.dim() - 2)))
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=False, keepdim=True)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.reshape(shape)  # on [1, C, 1, ...]: one multiply of the full tensor
    out = (x - mean) * scale
    return out if bias is None else out + bias.reshape(shape)


class TaskBatchNorm2d(nn.Module):
    """Batch normalisation with the statistics of the batch at hand, always, and no running stats.

    This is what MAML does (Finn et al., 2017; their code normalises with batch statistics at
    meta-test time too): each task is normalised with its own support or query batch (see
    :func:`batch_statistics_norm`), and there are no buffers to update in place while tasks are
    adapted in parallel. A user's ``nn.BatchNorm2d`` gets the same behaviour from
    :mod:`maml_cli.models.batch_norm`.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        return batch_statistics_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def has_convolutions(model: nn.Module) -> bool:
    """Whether ``model`` holds a convolution: such models take other defaults for task batching
    (a per-task loop on CPU) and threads (as many as the idle cores) than small MLPs."""
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
