"""The pieces of a trust-region policy optimisation step (Schulman et al., 2015), as the MAML
paper's RL code uses them for its outer loop: conjugate gradient against Hessian-vector products
of the KL divergence, the step scaled to the trust region, and a backtracking line search.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iterations: int, tolerance: float = 1e-10
) -> Tensor:
    """An approximate solution of ``A x = b`` for a symmetric positive-definite ``A`` known only
    through ``matvec(v) = A v``; ``iterations`` products at most."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iterations):
        if rr.item() < tolerance:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def trust_region_step(matvec: Callable[[Tensor], Tensor], gradient: Tensor, max_kl: float, iterations: int) -> Tensor:
    """The full TRPO step: the natural-gradient direction ``F^-1 g`` scaled so that the quadratic
    model of the KL divergence, ``0.5 s^T F s``, equals ``max_kl``. A step to subtract."""
    direction = conjugate_gradient(matvec, gradient, iterations)
    curvature = 0.5 * (direction @ matvec(direction))
    if not torch.isfinite(curvature) or curvature.item() <= 0:
        return torch.zeros_like(gradient)
    return direction * torch.sqrt(max_kl / curvature)


def line_search(
    evaluate: Callable[[float], tuple[float, float]],
    loss_before: float,
    max_kl: float,
    max_steps: int,
    backtrack: float,
) -> tuple[float, int]:
    """The largest fraction ``backtrack^k`` (``k < max_steps``) of the full step whose surrogate
    loss improves on ``loss_before`` while the mean KL stays within ``max_kl``; ``evaluate(f)``
    returns ``(loss, kl)`` after a fraction ``f`` of the step. Returns ``(f, tries)``, with
    ``f = 0`` when no fraction qualified (the parameters stay where they are)."""
    fraction = 1.0
    for attempt in range(1, max_steps + 1):
        loss, kl = evaluate(fraction)
        if loss < loss_before and kl <= max_kl:
            return fraction, attempt
        fraction *= backtrack
    return 0.0, max_steps
