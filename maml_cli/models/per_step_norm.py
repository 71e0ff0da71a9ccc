"""Per-step batch normalisation: MAML++'s BNWB and BNRS (Antoniou et al., 2019, Sec. 4).

MAML normalises every forward pass with the batch's own statistics and one shared scale and shift.
MAML++ observes that the features change as the inner loop adapts the weights, and gives each
inner step its own batch-norm weights and biases (BNWB, meta-learned) and its own running
statistics (BNRS). :func:`swap_batch_norms` replaces a model's batch-norm layers (our
:class:`~maml_cli.models.layers.TaskBatchNorm2d` and torch's ``nn.BatchNorm1d/2d/3d``) with
:class:`PerStepBatchNorm`, so this works with any model.

Which set a forward pass uses is said by a :class:`PerStepState` that the algorithm shares with
every swapped layer: ``step`` is the number of inner steps the parameters in use have taken
(0 = the initialisation), so the support pass of inner step ``k`` and the query pass before it
use set ``k``, and the query pass after the last of ``N`` training steps uses set ``N``: there are
``N + 1`` sets. A step beyond ``N`` (evaluation with more steps than training) uses set ``N``.

Running statistics are functional state: inside ``torch.func.vmap`` nothing is written in place.
When the state holds a ``sink`` dict, each layer puts its batch statistics there (under its name)
and the algorithm's vmapped function returns them as outputs; the algorithm then updates the
buffers outside ``vmap`` (see :meth:`PerStepBatchNorm.update_running_stats`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from maml_cli.models.layers import TaskBatchNorm2d, _is_batched


@dataclass
class PerStepState:
    """What the algorithm tells its per-step layers before a forward pass."""

    step: int = 0  # inner steps the parameters in use have taken
    running: bool = False  # normalise with that step's running statistics instead of the batch's
    sink: dict[str, Tensor] | None = None  # when a dict, layers put their batch statistics in it


class PerStepBatchNorm(nn.Module):
    """Batch normalisation with one scale/shift and/or one pair of running statistics per step.

    Args:
        num_features: channels (dimension 1 of the input).
        sets: how many steps have their own sets (``N + 1`` for ``N`` inner steps).
        per_step_weights: BNWB: weights and biases of shape ``[sets, C]`` (else one ``[C]`` pair).
        running_stats: BNRS: ``running_mean`` and ``running_var`` buffers of shape ``[sets, C]``.
        affine: learn a scale and shift at all (``nn.BatchNorm2d(affine=False)`` has none).
        state: the shared :class:`PerStepState` (a private one if not given).
    """

    def __init__(
        self,
        num_features: int,
        sets: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        per_step_weights: bool = True,
        running_stats: bool = True,
        affine: bool = True,
        state: PerStepState | None = None,
    ) -> None:
        super().__init__()
        if sets < 1:
            raise ValueError(f"PerStepBatchNorm needs at least one set, got sets={sets}")
        self.num_features = num_features
        self.sets = sets
        self.eps = eps
        self.momentum = momentum
        self.per_step_weights = per_step_weights and affine
        self.running_stats = running_stats
        self.state = state if state is not None else PerStepState()
        self.stats_key = ""  # this layer's name in the sink; set by swap_batch_norms
        shape = (sets, num_features) if self.per_step_weights else (num_features,)
        if affine:
            self.weight = nn.Parameter(torch.ones(shape))
            self.bias = nn.Parameter(torch.zeros(shape))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if running_stats:
            self.register_buffer("running_mean", torch.zeros(sets, num_features))
            self.register_buffer("running_var", torch.ones(sets, num_features))

    def _index(self) -> int:
        return min(self.state.step, self.sets - 1)

    def _affine(self, index: int) -> tuple[Tensor | None, Tensor | None]:
        if self.weight is None or not self.per_step_weights:
            return self.weight, self.bias
        return self.weight[index], self.bias[index]

    def forward(self, x: Tensor) -> Tensor:
        index = self._index()
        weight, bias = self._affine(index)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if self.state.running:
            if not self.running_stats:
                raise RuntimeError("running statistics were asked for, but this layer keeps none (bnrs=false)")
            mean, var = self.running_mean[index], self.running_var[index]
            out = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        else:
            dims = (0, *range(2, x.dim()))
            if self.state.sink is not None and self.running_stats:
                with torch.no_grad():  # unbiased variance, as torch's running_var
                    self.state.sink[self.stats_key] = torch.stack([x.mean(dim=dims), x.var(dim=dims)])
            if not _is_batched(x):  # the native kernel: same values, faster (see TaskBatchNorm2d)
                return F.batch_norm(x, None, None, weight, bias, training=True, eps=self.eps)
            mean = x.mean(dim=dims, keepdim=True)
            var = x.var(dim=dims, unbiased=False, keepdim=True)
            out = (x - mean) * torch.rsqrt(var + self.eps)
        if weight is not None:
            out = out * weight.reshape(shape) + bias.reshape(shape)
        return out

    @torch.no_grad()
    def update_running_stats(self, index: int, batch_stats: Tensor) -> None:
        """Move set ``index`` towards ``batch_stats`` (``[2, C]``: mean, unbiased variance) by
        ``momentum``, as ``nn.BatchNorm2d`` does; called outside ``vmap``, once per meta-step."""
        index = min(index, self.sets - 1)
        self.running_mean[index].lerp_(batch_stats[0].to(self.running_mean.dtype), self.momentum)
        self.running_var[index].lerp_(batch_stats[1].to(self.running_var.dtype), self.momentum)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, sets={self.sets}, eps={self.eps}, momentum={self.momentum}, "
            f"per_step_weights={self.per_step_weights}, running_stats={self.running_stats}"
        )


def swap_batch_norms(
    model: nn.Module,
    sets: int,
    per_step_weights: bool,
    running_stats: bool,
    momentum: float,
    state: PerStepState,
) -> list[PerStepBatchNorm]:
    """Replace every batch-norm layer of ``model`` in place with a :class:`PerStepBatchNorm`.

    Each set starts from the old layer's weights and (for ``nn.BatchNorm*`` that track them)
    running statistics, on its device and dtype, so a trained model keeps what it learned.
    Returns the new layers in the order of ``model.named_modules()``.
    """
    swapped = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, (TaskBatchNorm2d, _BatchNorm)):
            continue
        if not name:
            raise ValueError("the model is a single batch-norm layer; per-step layers replace submodules")
        like = next(iter([*module.parameters(), *module.buffers()]), None)
        factory = {"device": like.device, "dtype": like.dtype} if like is not None else {}
        affine = getattr(module, "weight", None) is not None
        layer = PerStepBatchNorm(
            module.num_features,
            sets,
            eps=module.eps,
            momentum=momentum,
            per_step_weights=per_step_weights,
            running_stats=running_stats,
            affine=affine,
            state=state,
        ).to(**factory)
        with torch.no_grad():
            if affine:
                layer.weight.copy_(module.weight.expand_as(layer.weight))
                layer.bias.copy_(module.bias.expand_as(layer.bias))
            if running_stats and getattr(module, "running_mean", None) is not None:
                layer.running_mean.copy_(module.running_mean.expand_as(layer.running_mean))
                layer.running_var.copy_(module.running_var.expand_as(layer.running_var))
        layer.stats_key = name
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
        swapped.append(layer)
    return swapped
