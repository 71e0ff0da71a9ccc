"""MAML and first-order MAML as a pure function of a parameter dict.

Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", Algorithm 2. For each task ``i`` the inner loop takes ``steps`` gradient steps from the
shared initialisation ``theta`` on the support set (Eq. 1):

    theta_i' = theta_i - alpha * grad L_support(theta_i),   starting from theta_i = theta,

and the meta-objective is the mean query loss of the adapted parameters (Eq. 6). Its gradient
with respect to ``theta`` flows through the inner updates: second order when the inner gradients
are built with ``create_graph=True``; first-order MAML (Sec. 5.2) treats them as constants.

The model is never mutated: every forward pass is ``torch.func.functional_call`` over a dict of
tensors, so adapted parameters are ordinary tensors in the autograd graph. In the batched
strategy each parameter is expanded to a leading task dimension and the forward pass runs under
``torch.func.vmap``; since the task losses are independent, one ``autograd.grad`` of their sum
with respect to the expanded parameters yields every task's own inner gradient at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from maml_cli.algorithms.precision import Precision
from maml_cli.algorithms.task_batching import resolve_task_batching
from maml_cli.data.tasks import TaskBatch
from maml_cli.models.batch_norm import prepare_batch_norms, update_running_stats
from maml_cli.models.selection import as_patterns, select_names

Params = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class MetaStepOutput:
    """Per-task losses of one meta-batch, detached (cheap to keep for logging).

    ``loss_before`` is the support loss at the initialisation: the parameters do not depend on the
    support set yet, so it estimates the pre-adaptation loss without bias and costs no extra
    forward pass. ``loss_after`` is the query loss after adaptation, the meta-objective.
    """

    loss_before: Tensor
    loss_after: Tensor


def clip_task_gradients(grads: Params, max_norm: float | None, batched: bool) -> Params:
    """Scale each task's inner gradient down to a global norm of at most ``max_norm`` (None: as is).

    A safeguard against the inner loop blowing up on an unlucky task (plain SGD at a fixed rate
    overshoots when a support set's loss is steep): the step keeps its direction, only its length
    is bounded. With ``batched`` the first dimension indexes tasks and each task is scaled on its
    own. Differentiable, so second-order meta-gradients see the clipped step.
    """
    if max_norm is None:
        return grads
    if batched:
        squares = sum(g.pow(2).reshape(g.shape[0], -1).sum(dim=1) for g in grads.values())
    else:
        squares = sum(g.pow(2).sum() for g in grads.values())
    scale = (max_norm / (squares.sqrt() + 1e-12)).clamp(max=1.0)
    if not batched:
        return {k: g * scale for k, g in grads.items()}
    return {k: g * scale.reshape(-1, *([1] * (g.dim() - 1))) for k, g in grads.items()}


def last_parametrised_module(model: nn.Module) -> str:
    """The name of the last submodule holding parameters of its own: the head, by convention."""
    names = [name for name, module in model.named_modules() if any(True for _ in module.parameters(recurse=False))]
    if not names or names[-1] == "":
        raise ValueError("cannot tell the model's head: name it with inner_loop.head=<submodule>")
    return names[-1]


class MAML(nn.Module):
    """Model-agnostic meta-learning of ``model``'s initialisation.

    Args:
        model: any ``nn.Module``; its parameters are the meta-learned initialisation.
        loss: the task loss ``loss(prediction, target) -> scalar`` for one task.
        steps: inner gradient steps during meta-training.
        lr: the inner learning rate ``alpha``.
        first_order: drop second-order terms (first-order MAML).
        eval_steps: inner steps at validation and evaluation (defaults to ``steps``).
        task_batching: ``vmap``, ``loop`` or ``auto`` (see :mod:`~maml_cli.algorithms.task_batching`).
        task_chunk: with ``vmap``, adapt at most this many tasks at once (0 = the whole
            meta-batch); the meta-gradient is accumulated chunk by chunk to bound memory.
        zero_head: start every task's inner loop from a zero head (the last submodule with
            parameters) instead of a meta-learned one: the "zeroing trick" of Kao et al. (2022,
            "MAML is a Noisy Contrastive Learner in Classification", Sec. 4). Since the classes of a
            task are in random order, a learned head only adds noise to the first inner step; a
            zero head makes that step build each class's weights from its own support features.
        grad_clip: bound each task's inner gradient to this global norm at every inner step, in
            training and at evaluation (None: off, as the papers' protocols are).
        adapt: which parameters the inner loop adapts, as name patterns (see
            :mod:`~maml_cli.models.selection`); None: all trainable ones. The others are still
            meta-learned by the outer loop (ANIL is ``adapt=["head.*"]``); frozen parameters
            (``requires_grad=False``, ``model.freeze``) are neither.
        batch_norm: how the model's standard batch-norm layers normalise: ``batch`` (the batch's
            own statistics, always; the MAML paper's convention) or ``running`` (running
            statistics at evaluation, updated by the outer loop only); see
            :mod:`~maml_cli.models.batch_norm`.
        precision: ``fp32``, ``bf16`` or ``fp16``: the dtype forward passes autocast to, in
            training, evaluation and adaptation alike; parameters, inner updates and the
            meta-gradient stay float32, and fp16 scales its losses (see
            :mod:`~maml_cli.algorithms.precision`).

    Modes: :meth:`meta_backward` puts the model in training mode (dropout on) and
    :meth:`evaluate` and :meth:`adapt` in evaluation mode (dropout off). Under ``vmap`` every
    task draws its own dropout masks.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        steps: int = 1,
        lr: float = 0.01,
        first_order: bool = False,
        eval_steps: int | None = None,
        task_batching: str = "auto",
        task_chunk: int = 0,
        zero_head: bool = False,
        grad_clip: float | None = None,
        adapt: Sequence[str] | str | None = None,
        batch_norm: str = "batch",
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.precision = Precision(precision)
        if grad_clip is not None and not (isinstance(grad_clip, (int, float)) and grad_clip > 0):
            raise ValueError(f"inner_loop.grad_clip must be a number > 0 or null (off), got {grad_clip!r}")
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.model = model
        self.loss = loss
        self.steps = steps
        self.lr = lr
        self.first_order = first_order
        self.eval_steps = steps if eval_steps is None else eval_steps
        self.task_batching = task_batching
        self.task_chunk = task_chunk
        self.zero_head = zero_head
        self._zeroed: set[str] = set()
        if zero_head:
            prefix = last_parametrised_module(model) + "."
            for name, param in model.named_parameters():
                if name.startswith(prefix):
                    param.detach().zero_()
                    param.requires_grad_(False)  # not meta-learned: every task starts from zero
                    self._zeroed.add(name)
        self._norm_layers = prepare_batch_norms(model, batch_norm)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad or n in self._zeroed]
        patterns = as_patterns(adapt)
        self._adapted = select_names(trainable, patterns, "inner_loop.adapt") if patterns else trainable
        if not self._adapted:
            raise ValueError("inner_loop.adapt leaves no parameter to adapt")

    # -- the update rule; variants of MAML override these ------------------------------------------

    def inner_update(self, params: Params, grads: Params, step: int) -> Params:
        """One inner SGD step. Works with or without a leading task dimension."""
        return {name: w - self.lr * grads[name] for name, w in params.items()}

    # -- forward passes ------------------------------------------------------------------------

    def initial_params(self) -> Params:
        """The part of the initialisation ``theta`` the inner loop adapts (MAML: all of it).

        These are the live parameters. Parameters left out (ANIL's body, ``adapt``'s others) are
        still used by the forward pass, through the module itself, and still meta-learned by the
        outer loop unless frozen.
        """
        live = dict(self.model.named_parameters())
        params = {name: live[name] for name in self._adapted}
        for name in self._zeroed & set(params):  # a fresh leaf, so the inner loop can differentiate through it
            params[name] = torch.zeros_like(params[name]).requires_grad_(True)
        return params

    def forward_with(self, params: Params, x: Tensor) -> Tensor:
        """The model's output on one task's inputs with parameters ``params`` (the module's own
        parameters stand in for any that ``params`` leaves out)."""
        buffers = dict(self.model.named_buffers())
        if self.precision.dtype is None:
            return functional_call(self.model, (params, buffers), (x,))
        return self.precision.forward_pass(lambda inputs: functional_call(self.model, (params, buffers), (inputs,)), x)

    def batched_forward(self, params: Params, x: Tensor) -> Tensor:
        """Outputs for every task: ``params`` and ``x`` carry a leading task dimension."""
        return vmap(self.forward_with, randomness="different")(params, x)

    def _task_losses(self, params: Params, x: Tensor, y: Tensor, batched: bool) -> Tensor:
        if batched:
            losses = vmap(lambda p, xi, yi: self.loss(self.forward_with(p, xi), yi), randomness="different")
            return losses(params, x, y)
        return self.loss(self.forward_with(params, x), y)

    # -- adaptation ----------------------------------------------------------------------------

    def strategy(self) -> str:
        """The task batching in effect, with ``auto`` resolved for the model's device."""
        device = next(self.model.parameters()).device
        return resolve_task_batching(self.task_batching, self.model, device)

    def _adapt(
        self, params: Params, x: Tensor, y: Tensor, steps: int, create_graph: bool, batched: bool
    ) -> tuple[Params, Tensor]:
        """Inner loop from ``params``; returns adapted params and the loss before the first step."""
        fast = params
        if batched:
            tasks = x.shape[0]
            fast = {k: v.unsqueeze(0).expand(tasks, *v.shape) for k, v in params.items()}
        names = list(fast)
        loss_before = None
        for step in range(steps):
            losses = self._task_losses(fast, x, y, batched)
            if loss_before is None:
                loss_before = losses.detach()
            grads = self.precision.grad(
                losses.sum(),
                [fast[k] for k in names],
                create_graph=create_graph,
                allow_unused=True,
                materialize_grads=True,
            )
            fast = self.inner_update(fast, clip_task_gradients(dict(zip(names, grads)), self.grad_clip, batched), step)
        if loss_before is None:
            with torch.no_grad():
                loss_before = self._task_losses(fast, x, y, batched)
        return fast, loss_before

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Params:
        """Adapt to each task of a batch (``[T, S, ...]``) and return parameters with a task dim.

        This is the deployment path: no meta-gradient is kept, so memory stays flat in ``steps``.
        """
        self.eval()
        steps = self.eval_steps if steps is None else steps
        if support_x.shape[0] == 1 and type(self)._eval_step is MAML._eval_step:
            return self._adapt_one(support_x[0], support_y[0], steps)
        fast = self._detached_task_params(support_x.shape[0])
        for step in range(steps):
            fast = self._eval_step(fast, support_x, support_y, step)
        return {k: v.detach() for k, v in fast.items()}

    def _adapt_one(self, x: Tensor, y: Tensor, steps: int) -> Params:
        """:meth:`adapt` for a single task, without ``vmap``: the same steps (the tests hold the two
        to each other), about 2.5x faster for a small model, where ``vmap``'s overhead per step is
        most of the work. A deployed model adapts one task at a time."""
        fast = {k: v.detach().clone().requires_grad_(True) for k, v in self.initial_params().items()}
        names = list(fast)
        for step in range(steps):
            with torch.enable_grad():
                loss = self._task_losses(fast, x, y, batched=False)
                grads = self.precision.grad(loss, [fast[k] for k in names], allow_unused=True, materialize_grads=True)
                new = self.inner_update(fast, clip_task_gradients(dict(zip(names, grads)), self.grad_clip, False), step)
            fast = {k: v.detach().requires_grad_(True) for k, v in new.items()}
        return {k: v.detach().unsqueeze(0) for k, v in fast.items()}

    def _detached_task_params(self, tasks: int) -> Params:
        return {
            k: v.detach().unsqueeze(0).expand(tasks, *v.shape).clone().requires_grad_(True)
            for k, v in self.initial_params().items()
        }

    def _eval_step(self, fast: Params, x: Tensor, y: Tensor, step: int) -> Params:
        with torch.enable_grad():
            losses = self._task_losses(fast, x, y, batched=True)
            names = list(fast)
            grads = self.precision.grad(
                losses.sum(), [fast[k] for k in names], allow_unused=True, materialize_grads=True
            )
            new = self.inner_update(fast, clip_task_gradients(dict(zip(names, grads)), self.grad_clip, True), step)
        return {k: v.detach().requires_grad_(True) for k, v in new.items()}

    # -- what the engine calls -----------------------------------------------------------------

    def meta_backward(self, batch: TaskBatch, step: int = 0) -> MetaStepOutput:
        """Accumulate the meta-gradient of the mean query loss into ``.grad`` of the parameters.

        ``step`` is the number of meta-steps taken so far; MAML ignores it, variants that anneal
        their training (MAML++'s derivative order and multi-step loss weights) read it. The
        algorithm's own work is :meth:`meta_gradient`; around it the model is put in training mode
        and, with ``batch_norm=running``, the outer loop updates the running statistics. With
        ``precision=fp16`` an overflowed meta-gradient is redone at half the loss scale
        (:meth:`~maml_cli.algorithms.precision.Precision.meta_step`).
        """
        self.train()
        out = self.precision.meta_step(
            lambda: self.meta_gradient(batch, step),
            self.parameters(),
            self,
            fresh=lambda result: bool(torch.isfinite(result.loss_before).all()),
        )
        inputs = (torch.cat([batch.support_x[t], batch.query_x[t]]) for t in range(batch.num_tasks))
        update_running_stats(self._norm_layers, lambda x: self.forward_with({}, x), inputs)
        return out

    def meta_gradient(self, batch: TaskBatch, step: int = 0) -> MetaStepOutput:
        """MAML's meta-gradient (see :meth:`meta_backward`), into ``.grad``.

        With ``loop`` each task's graph is freed by its own backward pass before the next task
        starts, so memory holds one task's graph at a time; ``vmap`` does the same per chunk.
        """
        num_tasks = batch.num_tasks
        params = self.initial_params()
        create_graph = not self.first_order
        before, after = [], []
        if self.strategy() == "vmap":
            chunk = self.task_chunk if self.task_chunk > 0 else num_tasks
            for start in range(0, num_tasks, chunk):
                part = batch.slice(start, start + chunk)
                fast, loss_before = self._adapt(
                    params, part.support_x, part.support_y, self.steps, create_graph, batched=True
                )
                query_losses = self._task_losses(fast, part.query_x, part.query_y, batched=True)
                self.precision.backward(query_losses.sum() / num_tasks)
                before.append(loss_before)
                after.append(query_losses.detach())
        else:
            for t in range(num_tasks):
                fast, loss_before = self._adapt(
                    params, batch.support_x[t], batch.support_y[t], self.steps, create_graph, False
                )
                query_loss = self._task_losses(fast, batch.query_x[t], batch.query_y[t], False)
                self.precision.backward(query_loss / num_tasks)
                before.append(loss_before.reshape(1))
                after.append(query_loss.detach().reshape(1))
        return MetaStepOutput(torch.cat(before), torch.cat(after))

    def evaluate(self, batch: TaskBatch, metric: LossFn, steps: int | None = None) -> Tensor:
        """``metric`` on each task's query set after 0, 1, ..., ``steps`` inner steps.

        Returns a ``[steps + 1, T, ...]`` tensor; row 0 is before adaptation, and ``...`` is the
        shape of one ``metric`` value (a scalar for a score; ``metric=lambda out, y: out`` returns
        the query predictions, which is how checkpoint ensembles are scored). No meta-gradient is
        built. Tasks are adapted in chunks of ``task_chunk`` (all at once when 0), or one by one
        with the ``loop`` strategy.
        """
        self.eval()
        steps = self.eval_steps if steps is None else steps
        num_tasks = batch.num_tasks
        chunk = self.task_chunk if self.task_chunk > 0 else num_tasks
        if self.strategy() == "loop":
            chunk = 1
        score = vmap(lambda p, xi, yi: metric(self.forward_with(p, xi), yi))
        parts: list[list[Tensor]] = [[] for _ in range(steps + 1)]
        for start in range(0, num_tasks, chunk):
            part = batch.slice(start, start + chunk)
            fast = self._detached_task_params(part.num_tasks)
            for step in range(steps + 1):
                with torch.no_grad():
                    parts[step].append(score(fast, part.query_x, part.query_y))
                if step < steps:
                    fast = self._eval_step(fast, part.support_x, part.support_y, step)
        return torch.stack([torch.cat(row) for row in parts])
