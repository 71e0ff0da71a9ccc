"""MAML++ (Antoniou, Edwards & Storkey, ICLR 2019, "How to train your MAML"), Sec. 4.

MAML's meta-gradient flows back through every inner step, which makes training unstable and
slow to tune. MAML++ keeps the algorithm and changes how it is trained; each change is a flag:

- MSL, multi-step loss (``msl``, ``msl_steps``): the meta-objective of a task is
  ``sum_i v_i L_query(theta_i)`` over the parameters ``theta_i`` after each inner step ``i = 1..N``
  instead of ``L_query(theta_N)`` alone, so every step gets a direct gradient. The weights start
  uniform and anneal towards the last step over ``msl_steps`` meta-steps (see
  :func:`multi_step_loss_weights`); afterwards only the last step's loss is used.
- LSLR (``lslr``): a learned inner learning rate per parameter tensor and per inner step,
  ``theta_{i+1} = theta_i - alpha_{l,i} * grad_l``, meta-learned with the initialisation.
- BNWB / BNRS (``bnwb``, ``bnrs``): per-step batch-norm weights and biases and per-step running
  statistics (:mod:`maml_cli.models.per_step_norm`).
- DA, derivative-order annealing (``first_order_steps``): first-order meta-gradients for the first
  meta-steps, second order afterwards.
- CA, cosine annealing of the meta learning rate, is the optimizer's ``schedule=cosine``, which
  ``inner_loop=mamlpp`` switches on (``configs/inner_loop/mamlpp.yaml``).

Decisions the paper leaves open, taken here:

- Per-step BN sets are indexed by the number of inner steps the parameters in use have taken,
  so ``N`` training steps have ``N + 1`` sets: set ``k`` serves the support pass of step ``k``
  and the query pass of ``theta_k`` (the official code has ``N`` sets and scores ``theta_{k+1}``
  with set ``k``). With BNWB the BN weights are meta-learned only, not adapted in the inner loop
  (a step's update of its own set would never be used again); the official configs do the same.
- Evaluation with more inner steps than training reuses the last step's learning rates
  (``alpha_{l,N-1}``) and batch-norm set (``N``).
- Training normalises with batch statistics, as MAML and the MAML++ code do (the official code
  collects per-step running statistics but always calls ``batch_norm`` in training mode).
  Evaluation does the same by default (``bn_eval_stats=batch``); ``bn_eval_stats=running``
  normalises every evaluation forward pass with the running statistics of its step instead.
- Running statistics are updated once per meta-step, towards the mean over the meta-batch's tasks
  and passes of each step's batch statistics, so both task strategies update them identically.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import vmap

from maml_cli.algorithms.maml import MAML, LossFn, MetaStepOutput, Params, clip_task_gradients
from maml_cli.data.tasks import TaskBatch
from maml_cli.models.batch_norm import MetaBatchNormMixin
from maml_cli.models.per_step_norm import PerStepState, swap_batch_norms

#: The official code's floor for the weight of a non-final step: 0.03 / N.
MSL_FLOOR = 0.03
BN_EVAL_STATS = ("batch", "running")

# Per step, the batch statistics each BN layer saw: layer name -> [tasks, 2, C] (mean, variance).
Stats = dict[int, list[dict[str, Tensor]]]


def multi_step_loss_weights(num_steps: int, meta_step: int, anneal_steps: int) -> list[float]:
    """The MSL importance ``v_i`` of the query loss after inner step ``i = 1..num_steps``.

    The official schedule (``get_per_step_loss_importance_vector``) in meta-steps: with progress
    ``p = meta_step / anneal_steps`` (the code's ``epoch / multi_step_loss_num_epochs``), each
    non-final weight is ``max((1 - p) / N, 0.03 / N)`` and the final one
    ``min((1 + (N - 1) p) / N, 1 - 0.03 (N - 1) / N)``: uniform at the start, summing to one, the
    final step gaining what the others lose. From ``meta_step >= anneal_steps`` on, only the last
    step's loss counts (weight 1), as in the code once the MSL epochs are over.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if meta_step >= anneal_steps:
        return [0.0] * (num_steps - 1) + [1.0]
    progress = meta_step / anneal_steps
    floor = MSL_FLOOR / num_steps
    early = max((1.0 - progress) / num_steps, floor)
    last = min((1.0 + (num_steps - 1) * progress) / num_steps, 1.0 - (num_steps - 1) * floor)
    return [early] * (num_steps - 1) + [last]


def _lr_key(name: str) -> str:
    return name.replace(".", "-")  # ParameterDict keys cannot hold dots


class MAMLPlusPlus(MAML):
    """MAML with MAML++'s training tricks, each switched by its own argument.

    Args (beyond :class:`~maml_cli.algorithms.maml.MAML`'s; ``lr`` initialises LSLR's rates):
        msl: use the multi-step loss while ``meta_step < msl_steps``.
        msl_steps: meta-steps over which the MSL weights anneal towards the last step.
        lslr: learn per-tensor, per-step inner learning rates (``inner_lrs`` in the state dict).
        bnwb: per-step batch-norm weights and biases.
        bnrs: per-step batch-norm running statistics.
        bn_momentum: momentum of the running statistics.
        bn_eval_stats: ``batch`` or ``running``: what evaluation and adaptation normalise with.
        first_order_steps: DA: first-order meta-gradients while ``meta_step < first_order_steps``
            (``first_order=true`` keeps them first order throughout).

    After :meth:`adapt` (``k`` steps), :meth:`batched_forward` uses batch-norm set ``k``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        steps: int = 5,
        lr: float = 0.1,
        first_order: bool = False,
        eval_steps: int | None = None,
        task_batching: str = "auto",
        task_chunk: int = 0,
        zero_head: bool = False,
        msl: bool = True,
        msl_steps: int = 5000,
        lslr: bool = True,
        bnwb: bool = True,
        bnrs: bool = True,
        bn_momentum: float = 0.1,
        bn_eval_stats: str = "batch",
        first_order_steps: int = 0,
        grad_clip: float | None = None,
        adapt: Sequence[str] | str | None = None,
        batch_norm: str = "batch",
        precision: str = "fp32",
    ) -> None:
        super().__init__(
            model,
            loss,
            steps=steps,
            lr=lr,
            first_order=first_order,
            eval_steps=eval_steps,
            task_batching=task_batching,
            task_chunk=task_chunk,
            zero_head=zero_head,
            grad_clip=grad_clip,
            adapt=adapt,
            batch_norm=batch_norm,
            precision=precision,
        )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"inner_loop.steps must be an integer >= 1, got {steps!r}")
        for key, value in (("msl_steps", msl_steps), ("first_order_steps", first_order_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"inner_loop.{key} must be an integer >= 0 (meta-steps), got {value!r}")
        if not 0.0 <= bn_momentum <= 1.0:
            raise ValueError(f"inner_loop.bn_momentum must be in [0, 1], got {bn_momentum!r}")
        if bn_eval_stats not in BN_EVAL_STATS:
            raise ValueError(f"inner_loop.bn_eval_stats must be one of {BN_EVAL_STATS}, got {bn_eval_stats!r}")
        if bn_eval_stats == "running" and not bnrs:
            raise ValueError("inner_loop.bn_eval_stats=running needs running statistics: set inner_loop.bnrs=true")
        self.msl, self.msl_steps = msl, msl_steps
        self.lslr, self.bnwb, self.bnrs = lslr, bnwb, bnrs
        self.bn_eval_stats = bn_eval_stats
        self.first_order_steps = first_order_steps

        # Shared with every per-step layer: which set to use, and where to put batch statistics.
        self.bn_state = PerStepState(running=bn_eval_stats == "running")
        self.norms = []
        if bnwb or bnrs:
            self.norms = swap_batch_norms(model, steps + 1, bnwb, bnrs, bn_momentum, self.bn_state)
            # The standard layers the base class prepared may be gone: keep those that are left.
            self._norm_layers = [m for m in model.modules() if isinstance(m, MetaBatchNormMixin)]
            if batch_norm == "running" and not self._norm_layers:
                raise ValueError(
                    "model.batch_norm=running does not apply: MAML++ gave the model per-step batch norms "
                    "(inner_loop.bnwb/bnrs); choose their statistics at evaluation with inner_loop.bn_eval_stats"
                )
        per_step = [layer.stats_key for layer in self.norms if layer.per_step_weights]
        meta_only = {f"{name}.{p}" for name in per_step for p in ("weight", "bias")}
        chosen = set(self._adapted)  # inner_loop.adapt's choice, made before the swap (same names)
        self._adapted = [name for name, _ in model.named_parameters() if name not in meta_only and name in chosen]
        if not self._adapted:
            raise ValueError("the model has no parameters for the inner loop to adapt")
        if lslr:  # one rate per adapted tensor and inner step, all starting at lr
            rates = {}
            for name, p in model.named_parameters():
                if name in self._adapted:
                    rates[_lr_key(name)] = nn.Parameter(torch.full((steps,), float(lr), dtype=p.dtype, device=p.device))
            self.inner_lrs = nn.ParameterDict(rates)

    # -- schedules (MSL, DA) -------------------------------------------------------------------

    def loss_weights(self, meta_step: int) -> list[float]:
        """The weight of the query loss after each inner step at this meta-step."""
        anneal = self.msl_steps if self.msl else 0
        return multi_step_loss_weights(self.steps, meta_step, anneal)

    def second_order(self, meta_step: int) -> bool:
        """Whether this meta-step's meta-gradient keeps the second-order terms (DA)."""
        return not self.first_order and meta_step >= self.first_order_steps

    # -- the update rule (LSLR) and what the inner loop adapts (BNWB) ---------------------------

    def inner_update(self, params: Params, grads: Params, step: int) -> Params:
        if not self.lslr:
            return super().inner_update(params, grads, step)
        k = min(step, self.steps - 1)  # beyond the trained steps: the last step's rates
        return {name: w - self.inner_lrs[_lr_key(name)][k] * grads[name] for name, w in params.items()}

    # -- evaluation and adaptation: keep the BN set in step with the parameters ------------------

    def _detached_task_params(self, tasks: int) -> Params:
        self.bn_state.step = 0
        return super()._detached_task_params(tasks)

    def _eval_step(self, fast: Params, x: Tensor, y: Tensor, step: int) -> Params:
        self.bn_state.step = step
        new = super()._eval_step(fast, x, y, step)
        self.bn_state.step = step + 1
        return new

    # -- meta-training --------------------------------------------------------------------------

    def meta_gradient(self, batch: TaskBatch, step: int = 0) -> MetaStepOutput:
        """Accumulate the meta-gradient of the mean (MSL-weighted) query loss; ``step`` is the
        meta-step count that drives MSL and DA. ``loss_after`` is the last step's query loss."""
        weights = self.loss_weights(step)
        create_graph = self.second_order(step)
        params = self.initial_params()
        num_tasks = batch.num_tasks
        stats: Stats = defaultdict(list)
        before, after = [], []
        evaluation_mode = self.bn_state.running
        self.bn_state.running = False  # training normalises with batch statistics
        try:
            if self.strategy() == "vmap":
                chunk = self.task_chunk if self.task_chunk > 0 else num_tasks
                for start in range(0, num_tasks, chunk):
                    part = batch.slice(start, start + chunk)
                    objective, loss_before, final = self._unroll(params, part, True, create_graph, weights, stats)
                    self.precision.backward(objective.sum() / num_tasks)
                    before.append(loss_before)
                    after.append(final)
            else:
                for t in range(num_tasks):
                    objective, loss_before, final = self._unroll(
                        params, batch.slice(t, t + 1), False, create_graph, weights, stats
                    )
                    self.precision.backward(objective / num_tasks)
                    before.append(loss_before.reshape(1))
                    after.append(final.reshape(1))
        finally:
            self.bn_state.running = evaluation_mode
            self.bn_state.sink = None
            self.bn_state.step = 0
        self._update_running_stats(stats)
        return MetaStepOutput(torch.cat(before), torch.cat(after))

    def _unroll(
        self, params: Params, part: TaskBatch, batched: bool, create_graph: bool, weights: list[float], stats: Stats
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Inner loop on the support sets of ``part``; returns the weighted query objective per
        task, the support loss before adaptation and the final query loss (both detached)."""
        support_x, support_y, query_x, query_y = part.support_x, part.support_y, part.query_x, part.query_y
        if batched:
            tasks = part.num_tasks
            fast = {k: v.unsqueeze(0).expand(tasks, *v.shape) for k, v in params.items()}
        else:
            support_x, support_y, query_x, query_y = support_x[0], support_y[0], query_x[0], query_y[0]
            fast = params
        names = list(fast)
        objective, loss_before, query = None, None, None
        for k in range(self.steps):
            losses = self._losses_at(k, fast, support_x, support_y, batched, stats)
            if loss_before is None:
                loss_before = losses.detach()
            grads = self.precision.grad(
                losses.sum(),
                [fast[n] for n in names],
                create_graph=create_graph,
                allow_unused=True,
                materialize_grads=True,
            )
            fast = self.inner_update(fast, clip_task_gradients(dict(zip(names, grads)), self.grad_clip, batched), k)
            if weights[k] > 0:
                query = self._losses_at(k + 1, fast, query_x, query_y, batched, stats)
                objective = weights[k] * query if objective is None else objective + weights[k] * query
        return objective, loss_before, query.detach()

    def _losses_at(self, step: int, params: Params, x: Tensor, y: Tensor, batched: bool, stats: Stats) -> Tensor:
        """Task losses with batch-norm set ``step``; with BNRS, the batch statistics of every
        layer come back as outputs of the (vmapped) function into ``stats[step]``."""
        self.bn_state.step = step
        if not (self.bnrs and self.norms):
            return self._task_losses(params, x, y, batched)

        def loss_and_stats(p: Params, xi: Tensor, yi: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            self.bn_state.sink = {}
            try:
                return self.loss(self.forward_with(p, xi), yi), self.bn_state.sink
            finally:
                self.bn_state.sink = None

        if batched:
            losses, seen = vmap(loss_and_stats, randomness="different")(params, x, y)
        else:
            losses, seen = loss_and_stats(params, x, y)
            seen = {name: value.unsqueeze(0) for name, value in seen.items()}
        stats[step].append(seen)
        return losses

    @torch.no_grad()
    def _update_running_stats(self, stats: Stats) -> None:
        """One momentum step per BN set used this meta-step, outside ``vmap``."""
        for step, seen in stats.items():
            for layer in self.norms:
                rows = torch.cat([found[layer.stats_key] for found in seen])
                layer.update_running_stats(step, rows.mean(dim=0))
