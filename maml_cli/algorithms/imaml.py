"""Implicit MAML (Rajeswaran, Finn, Kakade & Levine, 2019, "Meta-Learning with Implicit Gradients").

Each task's inner problem is the proximally regularised support loss (Sec. 3, Eq. 3-4):

    phi_i = argmin_phi  L_support_i(phi) + (lam / 2) ||phi - theta||^2,

solved approximately by ``steps`` gradient steps of size ``lr`` from ``phi = theta`` (the paper's
"iMAML, GD" variant; its Hessian-free inner solver with line search is not implemented). At the
minimiser, the implicit function theorem gives the Jacobian (Lemma 1, Eq. 6)

    d phi_i / d theta = (I + H_i / lam)^{-1},   H_i = Hessian of L_support_i at phi_i,

so the task's meta-gradient (Eq. 5) is ``g_i = (I + H_i / lam)^{-1} grad L_query_i(phi_i)``. It is
never formed as a matrix: ``g_i`` is the solution of a linear system found by conjugate gradient
from Hessian-vector products (Eq. 7, Algorithm 2), ``cg_steps`` of them, each a double backward
of the support loss at ``phi_i`` alone. No graph of the inner loop is kept (every inner step is
detached), so memory does not grow with ``steps``: the point of the method (Sec. 3.1, Theorem 1).

The meta-gradient depends only on where the inner loop ends, not on the path to it; it is exact
when ``phi_i`` is the exact minimiser and CG has converged. With too few inner steps it is an
approximation, as the paper's analysis allows (Definition 3, Theorem 1).

Task batching follows :class:`~maml_cli.algorithms.maml.MAML`. Under ``vmap`` the inner steps,
the Hessian-vector products and CG run for all tasks at once: the support losses of different
tasks share no parameters, so one double backward of their sum gives every task its own
``H_i v_i``, and the CG scalars (step sizes, residual norms) carry a task dimension so that each
task runs its own CG. ``loop`` does the same one task at a time; both give the same gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from maml_cli.algorithms.maml import MAML, LossFn, MetaStepOutput, Params, clip_task_gradients
from maml_cli.data.tasks import TaskBatch


def _task_dot(a: Params, b: Params, batched: bool) -> Tensor:
    """Per-task inner product of two parameter dicts: ``[T]`` when ``batched``, else a scalar."""
    total = None
    for name, x in a.items():
        y = b[name]
        part = (x * y).flatten(1).sum(1) if batched else (x * y).sum()
        total = part if total is None else total + part
    return total


def _scale(factor: Tensor, x: Tensor) -> Tensor:
    """``factor`` (per task, ``[T]``, or a scalar) times ``x`` (``[T, ...]`` or unbatched)."""
    return factor.reshape(factor.shape + (1,) * (x.dim() - factor.dim())) * x


class IMAML(MAML):
    """iMAML with a gradient-descent inner solver and a conjugate-gradient meta-gradient.

    Args:
        model, loss, eval_steps, task_batching, task_chunk: as for :class:`MAML`.
        steps: inner gradient steps on the regularised support loss during meta-training.
        lr: the inner step size.
        lam: the strength ``lambda`` of the proximal term ``(lam/2)||phi - theta||^2``. Larger
            keeps ``phi`` closer to ``theta`` and the linear system better conditioned.
        cg_steps: conjugate-gradient iterations, one Hessian-vector product each, per meta-step.
        cg_damping: solve ``((1 + cg_damping) I + H / lam) g = grad L_query`` instead; a little
            damping keeps CG stable where a non-convex support loss makes ``I + H/lam`` indefinite.
        cg_tol: stop a task's CG once its residual norm falls below ``cg_tol`` times the norm of
            its right-hand side (0: always run ``cg_steps``).
        first_order: skip the linear solve and take ``g = grad L_query(phi)``, i.e. treat
            ``d phi / d theta`` as the identity (the first-order approximation of Fig. 1).

    The proximal problem is also what :meth:`evaluate` and :meth:`adapt` solve at test time, so
    validation and ``maml-eval`` measure the model as it was meta-trained.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        steps: int = 16,
        lr: float = 0.1,
        lam: float = 2.0,
        cg_steps: int = 5,
        cg_damping: float = 0.0,
        cg_tol: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(model, loss, steps=steps, lr=lr, **kwargs)
        _check_number(lam, "inner_loop.lam", "the proximal regulariser's strength", positive=True)
        _check_number(lr, "inner_loop.lr", "the inner step size", positive=False)
        _check_number(cg_damping, "inner_loop.cg_damping", "the damping added to I + H/lam", positive=False)
        _check_number(cg_tol, "inner_loop.cg_tol", "CG's relative residual tolerance (0 = off)", positive=False)
        if isinstance(cg_steps, bool) or not isinstance(cg_steps, int) or cg_steps < 1:
            raise ValueError(
                f"inner_loop.cg_steps must be an integer >= 1 (conjugate-gradient iterations for the "
                f"implicit meta-gradient; the paper uses 5), got {cg_steps!r}; for no linear solve at all "
                "set inner_loop.first_order=true"
            )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"inner_loop.steps must be an integer >= 0, got {steps!r}")
        self.lam = float(lam)
        self.cg_steps = cg_steps
        self.cg_damping = float(cg_damping)
        self.cg_tol = float(cg_tol)

    # -- the inner problem -------------------------------------------------------------------

    def _proximal_step(self, fast: Params, anchor: Params, x: Tensor, y: Tensor, step: int, batched: bool):
        """One gradient step on ``L_support(phi) + (lam/2)||phi - anchor||^2``; returns the new,
        detached parameters and the support losses at ``fast`` (before the step)."""
        with torch.enable_grad():
            losses = self._task_losses(fast, x, y, batched)
            names = list(fast)
            grads = self.precision.grad(
                losses.sum(), [fast[k] for k in names], allow_unused=True, materialize_grads=True
            )
        with torch.no_grad():
            grads = {k: g + self.lam * (fast[k] - anchor[k]) for k, g in zip(names, grads)}
            grads = clip_task_gradients(grads, self.grad_clip, batched)
            new = self.inner_update({k: v.detach() for k, v in fast.items()}, grads, step)
        return {k: v.detach().requires_grad_(True) for k, v in new.items()}, losses.detach()

    def _eval_step(self, fast: Params, x: Tensor, y: Tensor, step: int) -> Params:
        # ``evaluate`` and ``adapt`` of the base class step through here; the anchor ``theta``
        # has no task dimension and broadcasts over the tasks of ``fast``.
        anchor = {k: v.detach() for k, v in self.initial_params().items()}
        return self._proximal_step(fast, anchor, x, y, step, batched=True)[0]

    def _solve_inner(self, anchor: Params, x: Tensor, y: Tensor, batched: bool) -> tuple[Params, Tensor]:
        """``self.steps`` proximal gradient steps from ``anchor``; returns ``phi`` (detached, a
        leaf that requires grad) and the support losses at ``theta``."""
        fast = {k: v.clone().requires_grad_(True) for k, v in anchor.items()}
        loss_before = None
        for step in range(self.steps):
            fast, losses = self._proximal_step(fast, anchor, x, y, step, batched)
            if loss_before is None:
                loss_before = losses
        if loss_before is None:
            with torch.no_grad():
                loss_before = self._task_losses(fast, x, y, batched)
        return fast, loss_before

    # -- the implicit meta-gradient ----------------------------------------------------------

    def _conjugate_gradient(self, hvp, rhs: Params, batched: bool) -> Params:
        """Solve ``((1 + damping) I + H / lam) g = rhs`` per task by CG from ``g = 0``.

        Every scalar of CG (residual norms, step sizes) is per task, so tasks batched together
        follow exactly the iterations each would follow alone. A task stops moving once its
        residual is below ``cg_tol`` (or exactly zero), instead of dividing 0 by 0.

        The paper assumes ``I + H/lam`` positive definite (the inner problem strongly convex).
        A non-convex support loss far from a minimum can break that; CG then meets a direction
        of non-positive curvature where its step is undefined. That task stops there and keeps
        its current iterate, or, at the first iteration, the right-hand side itself (the
        first-order ``d phi / d theta = I``), rather than taking an unbounded step.
        """
        diag = 1.0 + self.cg_damping

        def apply(v: Params) -> Params:
            hv = hvp(v)
            return {k: diag * v[k] + hv[k] / self.lam for k in v}

        def where(mask: Tensor, a: Params, b: Params) -> Params:
            return {k: torch.where(mask.reshape(mask.shape + (1,) * (a[k].dim() - mask.dim())), a[k], b[k]) for k in a}

        solution = {k: torch.zeros_like(v) for k, v in rhs.items()}
        residual = dict(rhs)
        direction = dict(rhs)
        rr = _task_dot(residual, residual, batched)
        threshold = (self.cg_tol**2) * rr
        active = rr > threshold
        one = torch.ones_like(rr)
        for iteration in range(self.cg_steps):
            if self.cg_tol > 0 and not bool(active.any()):  # a device sync, only when asked for
                break
            a_dir = apply(direction)
            curvature = _task_dot(direction, a_dir, batched)
            bent = active & (curvature <= 0)
            if iteration == 0:
                solution = where(bent, rhs, solution)
            active = active & ~bent
            alpha = torch.where(active, rr / torch.where(active, curvature, one), torch.zeros_like(rr))
            solution = {k: solution[k] + _scale(alpha, direction[k]) for k in solution}
            residual = {k: residual[k] - _scale(alpha, a_dir[k]) for k in residual}
            rr_new = _task_dot(residual, residual, batched)
            beta = torch.where(active, rr_new / torch.where(active, rr, one), torch.zeros_like(rr))
            direction = {k: residual[k] + _scale(beta, direction[k]) for k in direction}
            active = active & (rr_new > threshold)
            rr = rr_new
        return solution

    def _implicit_grads(self, phi: Params, batch: TaskBatch, batched: bool) -> tuple[Params, Tensor]:
        """Each task's meta-gradient ``(I + H/lam)^{-1} grad L_query(phi)`` and its query loss."""
        names = list(phi)
        leaves = [phi[k] for k in names]
        with torch.enable_grad():
            query_losses = self._task_losses(phi, batch.query_x, batch.query_y, batched)
            query_grads = self.precision.grad(query_losses.sum(), leaves, allow_unused=True, materialize_grads=True)
        rhs = dict(zip(names, query_grads))
        if self.first_order:
            return rhs, query_losses.detach()

        with torch.enable_grad():
            # The support gradient at phi with its graph: each Hessian-vector product is one more
            # backward through it, and it is the only graph alive, whatever the number of steps.
            support_losses = self._task_losses(phi, batch.support_x, batch.support_y, batched)
            support_grads = self.precision.grad(
                support_losses.sum(), leaves, create_graph=True, allow_unused=True, materialize_grads=True
            )

        def hvp(v: Params) -> Params:
            with torch.enable_grad():
                inner = sum((g * v[k]).sum() for k, g in zip(names, support_grads))
                # Scaled too: the backward runs through the support gradient's fp16 graph.
                hv = self.precision.grad(inner, leaves, retain_graph=True, allow_unused=True, materialize_grads=True)
            return {k: h.detach() for k, h in zip(names, hv)}

        return self._conjugate_gradient(hvp, rhs, batched), query_losses.detach()

    # -- what the engine calls -----------------------------------------------------------------

    def meta_gradient(self, batch: TaskBatch, step: int = 0) -> MetaStepOutput:
        """Add the mean over tasks of the implicit meta-gradients to ``.grad`` of ``theta``.

        The gradient is written directly rather than back-propagated: ``phi`` is detached from
        ``theta``, and ``d phi / d theta`` enters only through the linear solve.
        """
        num_tasks = batch.num_tasks
        params = self.initial_params()
        theta = {k: v.detach() for k, v in params.items()}
        total = {k: torch.zeros_like(v) for k, v in theta.items()}
        before, after = [], []
        if self.strategy() == "vmap":
            chunk = self.task_chunk if self.task_chunk > 0 else num_tasks
            for start in range(0, num_tasks, chunk):
                part = batch.slice(start, start + chunk)
                anchor = {k: v.unsqueeze(0).expand(part.num_tasks, *v.shape) for k, v in theta.items()}
                phi, loss_before = self._solve_inner(anchor, part.support_x, part.support_y, batched=True)
                grads, query_losses = self._implicit_grads(phi, part, batched=True)
                for k, g in grads.items():
                    total[k] += g.sum(0)
                before.append(loss_before)
                after.append(query_losses)
        else:
            for t in range(num_tasks):
                part = batch.slice(t, t + 1)
                task = TaskBatch(part.support_x[0], part.support_y[0], part.query_x[0], part.query_y[0])
                phi, loss_before = self._solve_inner(theta, task.support_x, task.support_y, batched=False)
                grads, query_loss = self._implicit_grads(phi, task, batched=False)
                for k, g in grads.items():
                    total[k] += g
                before.append(loss_before.reshape(1))
                after.append(query_loss.reshape(1))
        live = dict(self.model.named_parameters())
        for name, param in params.items():
            if param is not live.get(name) or not param.requires_grad:  # zero_head's fresh zeros, frozen
                continue
            grad = total[name] / num_tasks
            param.grad = grad if param.grad is None else param.grad + grad
        return MetaStepOutput(torch.cat(before), torch.cat(after))


def _check_number(value, key: str, what: str, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{key} must be a finite number {bound} ({what}), got {value!r}")
