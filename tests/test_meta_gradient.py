"""The meta-gradient itself: both task strategies agree, and second order matches finite differences."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maml_cli.algorithms import MAML
from maml_cli.data import SinusoidTasks
from maml_cli.models import MLP

from .helpers import Tiny


def meta_grad(strategy: str, first_order: bool, steps: int, dtype=torch.float32, chunk: int = 0, tasks=6):
    torch.manual_seed(0)
    model = MLP(1, 1, [40, 40]).to(dtype)
    dist = SinusoidTasks(shots=10, query=10, dtype=dtype)
    algo = MAML(
        model, dist.loss, steps=steps, lr=0.01, first_order=first_order, task_batching=strategy, task_chunk=chunk
    )
    gen = torch.Generator().manual_seed(1)
    out = algo.meta_backward(dist.sample(tasks, gen))
    grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    return grad, out


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
def test_vmap_and_loop_give_the_same_meta_gradient(first_order, steps):
    g_vmap, out_vmap = meta_grad("vmap", first_order, steps)
    g_loop, out_loop = meta_grad("loop", first_order, steps)
    assert g_loop.norm() > 0
    assert rel_diff(g_vmap, g_loop) <= 1e-5
    torch.testing.assert_close(out_vmap.loss_after, out_loop.loss_after, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out_vmap.loss_before, out_loop.loss_before, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("first_order", [False, True])
def test_strategies_agree_in_float64_to_rounding(first_order):
    g_vmap, _ = meta_grad("vmap", first_order, 2, dtype=torch.float64)
    g_loop, _ = meta_grad("loop", first_order, 2, dtype=torch.float64)
    assert rel_diff(g_vmap, g_loop) <= 1e-12


def test_task_chunks_accumulate_to_the_whole_batch_gradient():
    g_all, _ = meta_grad("vmap", False, 2, dtype=torch.float64)
    g_chunked, _ = meta_grad("vmap", False, 2, dtype=torch.float64, chunk=4)  # chunks of 4 and 2
    assert rel_diff(g_chunked, g_all) <= 1e-12


def test_second_order_terms_matter():
    """First-order MAML must differ from MAML, or the second-order path is not being exercised."""
    g_second, _ = meta_grad("vmap", False, 1, dtype=torch.float64)
    g_first, _ = meta_grad("vmap", True, 1, dtype=torch.float64)
    assert rel_diff(g_first, g_second) > 1e-3


def _meta_loss(model, algo_kwargs, batch, flat: torch.Tensor, adapt=lambda name: True) -> torch.Tensor:
    """Mean query loss after adaptation, written out by hand from the MAML equations; only the
    parameters for which ``adapt(name)`` holds take inner steps (all for MAML, the head for ANIL)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    losses = []
    for t in range(batch.num_tasks):
        chunks = torch.split(flat, [s.numel() for s in shapes])
        params = {n: c.reshape(s).clone().requires_grad_(True) for n, c, s in zip(names, chunks, shapes)}
        for _ in range(algo_kwargs["steps"]):
            pred = torch.func.functional_call(model, params, (batch.support_x[t],))
            loss = nn.functional.mse_loss(pred, batch.support_y[t])
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {
                n: (p - algo_kwargs["lr"] * g * adapt(n)).detach().requires_grad_(True)
                for (n, p), g in zip(params.items(), grads)
            }
        pred = torch.func.functional_call(model, params, (batch.query_x[t],))
        losses.append(nn.functional.mse_loss(pred, batch.query_y[t]).detach())
    return torch.stack(losses).mean()


def _finite_difference_meta_grad(model, algo_kwargs, batch, adapt=lambda name: True, eps=1e-6) -> torch.Tensor:
    """Central differences of :func:`_meta_loss` in every coordinate of the initialisation."""
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    numeric = torch.empty_like(theta)
    for i in range(theta.numel()):
        step = torch.zeros_like(theta)
        step[i] = eps
        plus = _meta_loss(model, algo_kwargs, batch, theta + step, adapt)
        minus = _meta_loss(model, algo_kwargs, batch, theta - step, adapt)
        numeric[i] = (plus - minus) / (2 * eps)
    return numeric


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_second_order_meta_gradient_matches_finite_differences(strategy):
    torch.manual_seed(3)
    model = Tiny().double()
    dist = SinusoidTasks(shots=4, query=5, dtype=torch.float64)
    batch = dist.sample(3, torch.Generator().manual_seed(5))
    kwargs = {"steps": 2, "lr": 0.1}
    algo = MAML(model, dist.loss, first_order=False, task_batching=strategy, **kwargs)
    algo.meta_backward(batch)
    analytic = torch.cat([p.grad.flatten() for p in model.parameters()])

    numeric = _finite_difference_meta_grad(model, kwargs, batch)
    assert rel_diff(analytic, numeric) <= 1e-6

    # First-order MAML drops the Hessian terms, so it must miss the finite differences.
    model.zero_grad()
    MAML(model, dist.loss, first_order=True, task_batching=strategy, **kwargs).meta_backward(batch)
    first = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert rel_diff(first, numeric) > 1e-3


def test_anil_meta_gradient_matches_finite_differences_for_both_strategies():
    from maml_cli.algorithms import ANIL

    torch.manual_seed(4)
    model = Tiny().double()
    dist = SinusoidTasks(shots=4, query=5, dtype=torch.float64)
    batch = dist.sample(3, torch.Generator().manual_seed(6))
    kwargs = {"steps": 2, "lr": 0.1}
    numeric = _finite_difference_meta_grad(model, kwargs, batch, adapt=lambda n: n.startswith("out."))
    for strategy in ("vmap", "loop"):
        model.zero_grad()
        anil = ANIL(model, dist.loss, task_batching=strategy, **kwargs)
        assert anil.head == "out"
        anil.meta_backward(batch)
        analytic = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert rel_diff(analytic, numeric) <= 1e-6


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_zero_head_meta_gradient_matches_finite_differences(strategy):
    """With the zeroing trick every task starts from a zero head: the head is not meta-learned,
    and the body's meta-gradient is that of MAML whose initial head is fixed at zero."""
    torch.manual_seed(7)
    model = Tiny().double()
    dist = SinusoidTasks(shots=4, query=5, dtype=torch.float64)
    batch = dist.sample(3, torch.Generator().manual_seed(8))
    kwargs = {"steps": 2, "lr": 0.1}
    algo = MAML(model, dist.loss, zero_head=True, task_batching=strategy, **kwargs)
    assert torch.count_nonzero(model.out.weight) == 0 and not model.out.weight.requires_grad
    algo.meta_backward(batch)
    assert model.out.weight.grad is None and model.out.bias.grad is None
    analytic = torch.cat([model.hidden.weight.grad.flatten(), model.hidden.bias.grad.flatten()])
    numeric = _finite_difference_meta_grad(model, kwargs, batch)[: analytic.numel()]
    assert analytic.norm() > 0
    assert rel_diff(analytic, numeric) <= 1e-6


def test_evaluate_matches_adapt_and_reports_every_step():
    torch.manual_seed(0)
    dist = SinusoidTasks(shots=5, query=7)
    algo = MAML(MLP(1, 1, [16]), dist.loss, steps=1, lr=0.01, eval_steps=3)
    batch = dist.fixed_tasks("val", 9)
    rows = algo.evaluate(batch, dist.metric)
    assert rows.shape == (4, 9)
    params = algo.adapt(batch.support_x, batch.support_y, steps=3)
    with torch.no_grad():
        pred = algo.batched_forward(params, batch.query_x)
    expected = ((pred - batch.query_y) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(rows[3], expected)
    # Adaptation on the support set lowers the query error on average.
    assert rows[3].mean() < rows[0].mean()
    loop = MAML(algo.model, dist.loss, lr=0.01, eval_steps=3, task_batching="loop").evaluate(batch, dist.metric)
    torch.testing.assert_close(loop, rows, rtol=1e-5, atol=1e-6)


def test_auto_picks_vmap_for_mlp_and_loop_for_convnet_on_cpu():
    mlp = MAML(MLP(), nn.functional.mse_loss, task_batching="auto")
    conv = MAML(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()), nn.functional.mse_loss, task_batching="auto")
    assert mlp.strategy() == "vmap"
    assert conv.strategy() == "loop"
