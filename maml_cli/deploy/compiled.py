"""One task's inner loop as one compiled graph (``torch.compile``), for latency-bound serving.

Why: adapting the sinusoid MLP (1-40-40-1) in 10 steps takes about 8 ms eagerly on one CPU core,
and almost none of it is arithmetic: each step is some thirty small operators, each paying the
dispatcher's and autograd's fixed cost. Traced once with ``torch.func.grad`` and compiled by
inductor, the whole loop (forward, gradient, update, ten times) becomes a few fused kernels and
runs in about 1 ms. A convolutional model gains little: its steps are bound by the convolutions'
arithmetic, which oneDNN already runs well.

The compiled loop is the algorithm's own (its loss, :meth:`~maml_cli.algorithms.maml.MAML.forward_with`,
``inner_update`` with learned rates, gradient clipping), for the algorithms whose single-task
adaptation is the plain loop of :meth:`MAML._adapt_one` (MAML, first-order MAML, ANIL, Meta-SGD);
the tests hold it to the eager loop. The number of steps is part of the graph (the loop is
unrolled), the support size is not (``dynamic=True``). Compiling is done once, ahead of the first
request (:meth:`maml_cli.deploy.model.MetaModel.compile`), and inductor caches it on disk for the
next process. It is for small models: the sinusoid MLP's 10-step loop compiles in 15-60 s on this
2-core machine, while a Conv-4's had not compiled after 20 minutes (a graph ten times larger).
"""

from __future__ import annotations

import torch
from torch import Tensor

from maml_cli.algorithms.maml import MAML, clip_task_gradients
from maml_cli.errors import ConfigError

Params = dict[str, Tensor]


def can_compile(algorithm) -> bool:
    """Whether ``algorithm`` adapts one task with the plain inner loop this module compiles."""
    kind = type(algorithm)
    return isinstance(algorithm, MAML) and kind._eval_step is MAML._eval_step and kind.adapt is MAML.adapt


class CompiledAdaptation:
    """``steps`` inner steps of ``algorithm`` on one task, compiled: ``(x, y) -> adapted params``."""

    def __init__(self, algorithm, steps: int) -> None:
        if not can_compile(algorithm):
            raise ConfigError(
                "compiled adaptation covers MAML, first-order MAML, ANIL and Meta-SGD, "
                f"not {type(algorithm).__name__}; serve it without compile=true"
            )
        self.algorithm, self.steps = algorithm, int(steps)
        self._loop = torch.compile(self._adapt, dynamic=True, fullgraph=True)

    def _adapt(self, params: Params, x: Tensor, y: Tensor) -> Params:
        algorithm = self.algorithm

        def task_loss(p: Params) -> Tensor:
            return algorithm._task_losses(p, x, y, batched=False)

        for step in range(self.steps):
            grads = torch.func.grad(task_loss)(params)
            params = algorithm.inner_update(params, clip_task_gradients(grads, algorithm.grad_clip, False), step)
        return params

    def __call__(self, x: Tensor, y: Tensor) -> Params:
        """Adapted parameters with a task dimension of 1, as ``algorithm.adapt(x[None], y[None])`` returns."""
        self.algorithm.eval()
        start = {k: v.detach() for k, v in self.algorithm.initial_params().items()}
        with torch.no_grad():  # torch.func.grad differentiates inside; nothing outside needs a graph
            fast = self._loop(start, x, y)
        return {k: v.detach().unsqueeze(0) for k, v in fast.items()}

    def warm_up(self, x: Tensor, y: Tensor) -> None:
        """Compile now, on an example support set (any values of the right shapes)."""
        try:
            self(x, y)
        except RuntimeError as exc:  # inductor's failures (no C++ compiler, ...) are RuntimeErrors
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            why = f"torch.compile could not compile the adaptation ({first}); run without compile"
            raise ConfigError(why) from None
