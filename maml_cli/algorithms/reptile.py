"""Reptile (Nichol, Achiam & Schulman, 2018, "On First-Order Meta-Learning Algorithms").

Reptile meta-learns an initialisation without differentiating through adaptation. For each task
``i`` of a meta-batch it trains from ``theta`` with ``k`` steps of an ordinary optimizer (SGD, or
Adam with ``beta1 = 0`` as in the paper's experiments) on minibatches of the task's training data,
giving ``phi_i = U^k_i(theta)``, and then moves ``theta`` towards the adapted weights
(Algorithm 2, the batched version):

    theta <- theta + epsilon * (1/n) sum_i (phi_i - theta).

Sec. 3 points out that ``theta - phi`` can be treated as a gradient and handed to any optimizer.
That is what :meth:`Reptile.meta_backward` does: it writes ``theta - mean_i phi_i`` into ``.grad``
and the engine's meta-optimizer takes the step. ``optimizer=sgd optimizer.momentum=0
optimizer.lr=epsilon`` gives exactly the update above; the default Adam meta-optimizer gives the
adaptive variant the paper mentions.

Why it works (Sec. 5): a Taylor expansion of the update shows that for ``k > 1`` minibatch steps it
contains, besides the gradient of the expected loss, a term that increases the inner product
between gradients of different minibatches of the same task, so the task is learnt quickly. With
``k = 1`` full-batch SGD step it is just ``lr * grad L(theta)``, i.e. joint training on all tasks.
Minibatches of the support set are therefore part of the algorithm (``inner_batch_size``), drawn
without replacement within each pass over the support set, in a seeded order that depends only on
``(seed, meta-step)``: a run, and a resumed run, sees the same minibatches every time.

The inner optimizer is a pure function of tensors (:class:`InnerOptimizer`), so under ``vmap``
every task's weights *and* Adam moments simply carry a leading task dimension and one update serves
all tasks. ``loop`` adapts one task at a time with the same code and gives the same result. Each
inner step is detached from the previous one: memory holds the activations of one step only, no
matter how many steps there are.

One difference from the authors' code (github.com/openai/supervised-reptile): there the Adam
moments live in the TensorFlow optimizer and carry over from task to task. Here every task starts
from fresh moments, as Algorithm 1 reads ("SGD or Adam for k steps" from ``theta``), which keeps
each adaptation a function of ``(theta, support set)`` alone, independent of the task order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import vmap

from maml_cli.algorithms.maml import MAML, LossFn, MetaStepOutput, Params, clip_task_gradients
from maml_cli.data.tasks import TaskBatch

InnerState = dict[str, Params]
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class InnerOptimizer:
    """SGD or Adam as pure functions: ``init(params) -> state``, ``update(...) -> (params, state)``.

    Adam follows Kingma & Ba (2015), Algorithm 1, in the arithmetic of ``torch.optim.Adam`` (bias
    corrections applied to the step size and to ``sqrt(v)``, ``eps`` added after), so it agrees
    with it to rounding. Every operation is elementwise, so tensors may carry any leading
    dimensions (the task dimension under ``vmap``); ``t`` (1-based) is the same for all tasks.
    """

    name: str
    lr: float
    betas: tuple[float, float] = (0.0, 0.999)
    eps: float = 1e-8

    def init(self, params: Params) -> InnerState:
        if self.name == "sgd":
            return {}
        return {
            "exp_avg": {k: torch.zeros_like(v) for k, v in params.items()},
            "exp_avg_sq": {k: torch.zeros_like(v) for k, v in params.items()},
        }

    def update(self, params: Params, grads: Params, state: InnerState, t: int) -> tuple[Params, InnerState]:
        if self.name == "sgd":
            return {k: p - self.lr * grads[k] for k, p in params.items()}, state
        beta1, beta2 = self.betas
        step_size = self.lr / (1.0 - beta1**t)
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**t)
        new_params, exp_avg, exp_avg_sq = {}, {}, {}
        for k, p in params.items():
            g = grads[k]
            m = state["exp_avg"][k].lerp(g, 1.0 - beta1)
            v = state["exp_avg_sq"][k] * beta2 + (1.0 - beta2) * g * g
            denom = v.sqrt() / bias_correction2_sqrt + self.eps
            new_params[k] = p - step_size * (m / denom)
            exp_avg[k], exp_avg_sq[k] = m, v
        return new_params, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


def minibatch_order(
    num_tasks: int, support_size: int, steps: int, batch_size: int, generator: torch.Generator
) -> Tensor | None:
    """Indices into each task's support set for every inner step: ``[num_tasks, steps, batch_size]``.

    Like the authors' sampler, each task's support set is shuffled and cut into consecutive
    minibatches, reshuffled when a pass is used up (a minibatch may straddle two passes). ``None``
    means every step uses the whole support set: ``batch_size`` is 0 or not smaller than it.
    """
    if batch_size <= 0 or batch_size >= support_size or steps == 0:
        return None
    passes = math.ceil(steps * batch_size / support_size)
    keys = torch.rand(num_tasks, passes, support_size, generator=generator, dtype=torch.float64)
    order = keys.argsort(dim=-1).reshape(num_tasks, passes * support_size)
    return order[:, : steps * batch_size].reshape(num_tasks, steps, batch_size)


def _seeded_generator(*parts: object) -> torch.Generator:
    """A CPU generator whose seed is a stable hash of ``parts`` (same on every run and device)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest, "little") >> 1)
    return generator


def _select(x: Tensor, y: Tensor, order: Tensor | None, t: int, batched: bool) -> tuple[Tensor, Tensor]:
    """The minibatch of inner step ``t`` (0-based) of a support set, from ``order``
    (``[T, steps, b]`` when ``batched``, else ``[steps, b]``; None: the whole support set)."""
    if order is None:
        return x, y
    if batched:
        rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
        return x[rows, order[:, t]], y[rows, order[:, t]]
    return x[order[t]], y[order[t]]


def _is_int(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Reptile(MAML):
    """Reptile with an SGD or Adam inner loop on minibatches of the support set.

    Args:
        model, loss, task_batching, task_chunk: as for :class:`~maml_cli.algorithms.maml.MAML`.
        steps: inner optimizer steps per task during meta-training (the paper's ``k``).
        lr: the inner optimizer's learning rate.
        optimizer: ``adam`` (the paper's choice) or ``sgd``.
        betas: Adam's ``(beta1, beta2)``; the paper sets ``beta1 = 0`` (no momentum).
        eps: Adam's ``epsilon``.
        inner_batch_size: support examples per inner step; 0 (or at least the support size)
            means the whole support set every step.
        eval_inner_batch_size: the same at validation and evaluation (None: ``inner_batch_size``);
            the paper evaluates with a different one than it trains with.
        eval_steps: inner steps at validation and evaluation (defaults to ``steps``).
        seed: seeds the minibatch order, together with the meta-step (the config passes the
            run's ``seed``).
        first_order: must be true; Reptile never differentiates through its inner loop.
        **kwargs: the other options of :class:`~maml_cli.algorithms.maml.MAML` (e.g. ``zero_head``).

    :meth:`evaluate` and :meth:`adapt` adapt with the same inner optimizer on the support set,
    so validation and ``maml-eval`` measure the model as it was meta-trained (as the paper
    evaluates: ``eval_steps`` steps of the inner optimizer, then the query set is scored).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        steps: int = 5,
        lr: float = 0.001,
        optimizer: str = "adam",
        betas: Sequence[float] = (0.0, 0.999),
        eps: float = 1e-8,
        inner_batch_size: int = 0,
        eval_inner_batch_size: int | None = None,
        eval_steps: int | None = None,
        seed: int = 0,
        first_order: bool = True,
        task_batching: str = "auto",
        task_chunk: int = 0,
        **kwargs,
    ) -> None:
        optimizer = str(getattr(optimizer, "value", optimizer))
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"inner_loop.optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        if not _is_int(steps, 1):
            raise ValueError(
                f"inner_loop.steps must be an integer >= 1, got {steps!r}: with no inner step the adapted "
                "weights equal theta and Reptile learns nothing"
            )
        if not _is_number(lr) or lr <= 0:
            raise ValueError(f"inner_loop.lr must be a finite number > 0 (the inner {optimizer} step size), got {lr!r}")
        betas = tuple(betas)
        if len(betas) != 2 or not all(_is_number(b) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(
                f"inner_loop.betas must be two numbers in [0, 1) (Adam's beta1, beta2; the paper uses "
                f"[0, 0.999]), got {list(betas)!r}"
            )
        if not _is_number(eps) or eps < 0:
            raise ValueError(f"inner_loop.eps must be a finite number >= 0 (Adam's epsilon), got {eps!r}")
        if not _is_int(inner_batch_size, 0):
            raise ValueError(
                f"inner_loop.inner_batch_size must be an integer >= 0 (0 = the whole support set), "
                f"got {inner_batch_size!r}"
            )
        if eval_inner_batch_size is not None and not _is_int(eval_inner_batch_size, 0):
            raise ValueError(
                f"inner_loop.eval_inner_batch_size must be an integer >= 0 (0 = the whole support set) "
                f"or null (= inner_loop.inner_batch_size), got {eval_inner_batch_size!r}"
            )
        if eval_steps is not None and not _is_int(eval_steps, 0):
            raise ValueError(f"inner_loop.eval_steps must be an integer >= 0, got {eval_steps!r}")
        if not _is_int(task_chunk, 0):
            raise ValueError(f"inner_loop.task_chunk must be an integer >= 0 (0 = all tasks), got {task_chunk!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"inner_loop.seed must be an integer, got {seed!r}")
        if not first_order:
            raise ValueError(
                "inner_loop.first_order=false is not available for Reptile: it never differentiates through "
                "its inner loop; leave inner_loop.first_order=true (for second-order MAML use inner_loop=maml)"
            )
        super().__init__(
            model,
            loss,
            steps=steps,
            lr=float(lr),
            first_order=True,
            eval_steps=eval_steps,
            task_batching=task_batching,
            task_chunk=task_chunk,
            **kwargs,
        )
        self.inner_optimizer = InnerOptimizer(optimizer, float(lr), (float(betas[0]), float(betas[1])), float(eps))
        self.inner_batch_size = inner_batch_size
        self.eval_inner_batch_size = inner_batch_size if eval_inner_batch_size is None else eval_inner_batch_size
        self.seed = seed

    # -- minibatch orders ----------------------------------------------------------------------

    def training_order(self, num_tasks: int, support_size: int, step: int) -> Tensor | None:
        """The minibatches :meth:`meta_backward` uses at meta-step ``step`` (see :func:`minibatch_order`)."""
        generator = _seeded_generator("reptile-train", self.seed, step)
        return minibatch_order(num_tasks, support_size, self.steps, self.inner_batch_size, generator)

    def evaluation_order(self, num_tasks: int, support_size: int, steps: int) -> Tensor | None:
        """The minibatches :meth:`evaluate` and :meth:`adapt` use: the same on every call, so a
        validation scores the same adaptation each time (the order of the ``j``-th task of a
        call is the same in every call)."""
        generator = _seeded_generator("reptile-eval", self.seed)
        return minibatch_order(num_tasks, support_size, steps, self.eval_inner_batch_size, generator)

    # -- the inner loop ------------------------------------------------------------------------

    def _task_groups(self, num_tasks: int) -> Iterator[tuple[int, int, bool]]:
        """``(start, stop, batched)``: chunks of tasks under ``vmap``, single tasks with ``loop``."""
        if self.strategy() == "loop":
            for t in range(num_tasks):
                yield t, t + 1, False
            return
        chunk = self.task_chunk if self.task_chunk > 0 else num_tasks
        for start in range(0, num_tasks, chunk):
            yield start, min(start + chunk, num_tasks), True

    @staticmethod
    def _group(tensors: Sequence[Tensor], order: Tensor | None, start: int, stop: int, batched: bool):
        """The tasks ``start:stop`` of ``tensors`` and ``order``; unbatched: task ``start`` alone."""
        if batched:
            return [x[start:stop] for x in tensors], None if order is None else order[start:stop]
        return [x[start] for x in tensors], None if order is None else order[start]

    def _start(self, theta: Params, num_tasks: int | None) -> Params:
        """Fresh, detached copies of ``theta``, with a leading task dim unless ``num_tasks`` is None."""
        if num_tasks is None:
            return {k: v.detach().clone() for k, v in theta.items()}
        return {k: v.detach().unsqueeze(0).expand(num_tasks, *v.shape).clone() for k, v in theta.items()}

    def _inner_step(
        self, fast: Params, state: InnerState, x: Tensor, y: Tensor, t: int, batched: bool
    ) -> tuple[Params, InnerState, Tensor]:
        """One optimizer step (``t`` is 1-based) on the minibatch ``x, y``; the graph of the loss
        is freed before returning. Returns the new weights and state, and the loss before the step."""
        names = list(fast)
        leaves = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
        with torch.enable_grad():
            losses = self._task_losses(leaves, x, y, batched)
            grads = self.precision.grad(
                losses.sum(), [leaves[k] for k in names], allow_unused=True, materialize_grads=True
            )
        with torch.no_grad():
            detached = {k: v.detach() for k, v in leaves.items()}
            grads = clip_task_gradients(dict(zip(names, grads)), self.grad_clip, batched)
            new, state = self.inner_optimizer.update(detached, grads, state, t)
        return new, state, losses.detach()

    def _train(
        self, theta: Params, x: Tensor, y: Tensor, order: Tensor | None, steps: int, batched: bool
    ) -> tuple[Params, Tensor | None]:
        """``steps`` inner steps from ``theta`` on the support set ``x, y`` in minibatch ``order``;
        returns ``phi`` (detached) and the loss of the first minibatch at ``theta`` (None if no step)."""
        fast = self._start(theta, x.shape[0] if batched else None)
        state = self.inner_optimizer.init(fast)
        first = None
        for t in range(steps):
            xb, yb = _select(x, y, order, t, batched)
            fast, state, losses = self._inner_step(fast, state, xb, yb, t + 1, batched)
            if first is None:
                first = losses
        return fast, first

    # -- what the engine calls -----------------------------------------------------------------

    def meta_gradient(self, batch: TaskBatch, step: int = 0) -> MetaStepOutput:
        """Add ``theta - mean_i phi_i`` to ``.grad`` of the adapted parameters.

        A meta-optimizer step of plain SGD with learning rate ``epsilon`` then performs the
        paper's update ``theta <- theta + epsilon (mean_i phi_i - theta)`` (Algorithm 2).
        ``loss_before`` is each task's loss on its first minibatch at ``theta`` (the support loss
        when ``inner_batch_size`` is 0; an unbiased estimate of it otherwise, at no extra cost);
        ``loss_after`` is the query loss at ``phi_i``, computed without a graph: the query set
        plays no part in Reptile's update, it only measures adaptation.
        """
        theta = self.initial_params()
        num_tasks = batch.num_tasks
        order = self.training_order(num_tasks, batch.support_x.shape[1], step)
        order = None if order is None else order.to(batch.support_x.device)
        shift = {k: torch.zeros_like(v) for k, v in theta.items()}  # sum_i (theta - phi_i)
        before, after = [], []
        for start, stop, batched in self._task_groups(num_tasks):
            (x, y, qx, qy), part_order = self._group(
                (batch.support_x, batch.support_y, batch.query_x, batch.query_y), order, start, stop, batched
            )
            phi, first = self._train(theta, x, y, part_order, self.steps, batched)
            with torch.no_grad():
                query = self._task_losses(phi, qx, qy, batched)
                for k, v in theta.items():
                    difference = v.detach() - phi[k]
                    shift[k] += difference.sum(0) if batched else difference
            before.append(first.reshape(-1))
            after.append(query.reshape(-1))
        live = dict(self.model.named_parameters())
        for k, p in theta.items():
            if p is not live.get(k):  # not meta-learned (zero_head's fresh zeros)
                continue
            grad = shift[k] / num_tasks
            p.grad = grad if p.grad is None else p.grad + grad
        return MetaStepOutput(torch.cat(before), torch.cat(after))

    def evaluate(self, batch: TaskBatch, metric: LossFn, steps: int | None = None) -> Tensor:
        """``metric`` on each task's query set after 0, 1, ..., ``steps`` steps of the inner
        optimizer on the support set (minibatches of ``eval_inner_batch_size``).

        Returns ``[steps + 1, T, ...]`` (``...``: the shape of one ``metric`` value); row 0 is
        before adaptation. Tasks go in chunks of ``task_chunk`` under ``vmap``, one by one with
        ``loop``; both give the same rows.
        """
        self.eval()
        steps = self.eval_steps if steps is None else steps
        num_tasks = batch.num_tasks
        theta = self.initial_params()
        order = self.evaluation_order(num_tasks, batch.support_x.shape[1], steps)
        order = None if order is None else order.to(batch.support_x.device)
        score = vmap(lambda p, xi, yi: metric(self.forward_with(p, xi), yi))
        rows: list[list[Tensor]] = [[] for _ in range(steps + 1)]
        for start, stop, batched in self._task_groups(num_tasks):
            (x, y, qx, qy), part_order = self._group(
                (batch.support_x, batch.support_y, batch.query_x, batch.query_y), order, start, stop, batched
            )
            fast = self._start(theta, x.shape[0] if batched else None)
            state = self.inner_optimizer.init(fast)
            for t in range(steps + 1):
                with torch.no_grad():
                    if batched:
                        rows[t].append(score(fast, qx, qy))
                    else:
                        rows[t].append(metric(self.forward_with(fast, qx), qy).unsqueeze(0))
                if t < steps:
                    xb, yb = _select(x, y, part_order, t, batched)
                    fast, state, _ = self._inner_step(fast, state, xb, yb, t + 1, batched)
        return torch.stack([torch.cat(row) for row in rows])

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Params:
        """Adapt to each task of a batch (``[T, S, ...]``) as :meth:`evaluate` does; returns the
        adapted parameters with a leading task dimension, detached."""
        self.eval()
        steps = self.eval_steps if steps is None else steps
        theta = self.initial_params()
        num_tasks = support_x.shape[0]
        order = self.evaluation_order(num_tasks, support_x.shape[1], steps)
        order = None if order is None else order.to(support_x.device)
        parts = []
        for start, stop, batched in self._task_groups(num_tasks):
            (x, y), part_order = self._group((support_x, support_y), order, start, stop, batched)
            phi, _ = self._train(theta, x, y, part_order, steps, batched)
            parts.append(phi if batched else {k: v.unsqueeze(0) for k, v in phi.items()})
        return {k: torch.cat([part[k] for part in parts]) for k in theta}
