"""Meta-SGD (Li, Zhou, Chen & Li, 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning").

MAML with a learned inner learning rate per parameter entry. The adaptation step (Sec. 3,
Algorithm 1) is

    theta_i' = theta - alpha o grad L_support_i(theta),

where ``alpha`` has the shape of ``theta`` and ``o`` is the elementwise product, and the
meta-objective ``mean_i L_query_i(theta_i')`` is minimised over ``theta`` *and* ``alpha``
together. ``alpha`` sets a step size and a direction for every coordinate (its entries may turn
negative), so one step can do what MAML needs several for; the paper adapts in a single step.

``alpha`` is a set of ``nn.Parameter`` s of this module, one per adapted parameter, so it is in
``parameters()`` (the trainer's outer optimizer updates it), in ``state_dict()`` (checkpoints
keep it) and loaded back by ``maml-eval``. Its gradient flows through the inner update for
both derivative orders: with ``first_order`` the support gradient is a constant, but the update
``theta - alpha o g`` still depends on ``alpha`` linearly, so ``dL/d alpha = -g o dL/d theta'``
for one step. With several inner steps the same ``alpha`` is used at every step.

Initialisation follows the paper: all entries of ``alpha`` start at one value drawn uniformly
from ``lr_init_range`` (the paper's [0.005, 0.1]); without a range they start at ``lr``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from maml_cli.algorithms.maml import MAML, LossFn, Params


def _key(name: str) -> str:
    """``nn.ParameterDict`` keys cannot hold dots; parameter names do (``net.0.weight``)."""
    return name.replace(".", "/")


def initial_inner_lr(lr: float, lr_init_range: Sequence[float] | None) -> float:
    """The value every entry of ``alpha`` starts at: ``lr``, or one uniform draw from the range
    (from the global RNG, which the engine seeds before building the run)."""
    if lr_init_range is None:
        if not math.isfinite(float(lr)):
            raise ValueError(f"inner_loop.lr must be a finite number, got {lr}")
        return float(lr)
    bounds = [float(b) for b in lr_init_range]
    if len(bounds) != 2 or not all(math.isfinite(b) for b in bounds) or not 0.0 <= bounds[0] <= bounds[1]:
        raise ValueError(
            f"inner_loop.lr_init_range must be [low, high] with 0 <= low <= high, got {list(lr_init_range)}; "
            "e.g. inner_loop.lr_init_range=[0.005,0.1] (the paper's), or null to start every entry at inner_loop.lr"
        )
    low, high = bounds
    return low + (high - low) * torch.rand(()).item()


class MetaSGD(MAML):
    """MAML whose inner learning rate ``alpha`` is a learned tensor per adapted parameter.

    Args:
        model, loss, steps, first_order, eval_steps, task_batching, task_chunk: as for :class:`MAML`.
        lr: the initial value of every entry of ``alpha`` when ``lr_init_range`` is None.
        lr_init_range: ``[low, high]``: start every entry of ``alpha`` at one value drawn from
            ``U[low, high]`` instead (Li et al. use ``[0.005, 0.1]``); the draw is kept in ``self.lr``.

    ``alpha`` covers exactly the parameters :meth:`initial_params` returns when the constructor
    runs, so a variant that adapts a subset (ANIL's head) gets rates for that subset only;
    whatever ``initial_params`` reads must be set before this constructor finishes (with
    ``class AnilMetaSGD(MetaSGD, ANIL)`` ANIL's constructor runs first, through ``super()``).
    """

    def __init__(
        self, model: nn.Module, loss: LossFn, lr: float = 0.01, lr_init_range: Sequence[float] | None = None, **kwargs
    ) -> None:
        super().__init__(model, loss, lr=lr, **kwargs)
        self.lr = initial_inner_lr(lr, lr_init_range)
        adapted = self.initial_params()
        # Pairs, not a dict: ParameterDict sorts a plain dict's keys; this keeps the model's order.
        self.inner_lrs = nn.ParameterDict(
            [(_key(name), nn.Parameter(torch.full_like(p.detach(), self.lr))) for name, p in adapted.items()]
        )

    def inner_lr(self, name: str) -> Tensor:
        """The learned rates ``alpha`` of the adapted parameter ``name`` (same shape)."""
        return self.inner_lrs[_key(name)]

    def inner_update(self, params: Params, grads: Params, step: int) -> Params:
        """``w - alpha o g`` for each parameter; ``alpha`` broadcasts over a leading task dim."""
        return {name: w - self.inner_lr(name) * grads[name] for name, w in params.items()}
