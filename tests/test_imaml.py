"""iMAML: the implicit meta-gradient against closed forms, dense Hessians and the CLI.

On a linear model with squared loss the support Hessian is constant and the proximal inner problem
has a closed-form minimiser, so the exact meta-gradient of the mean query loss is the gradient of
a function written with ``torch.linalg.solve`` alone, which autograd differentiates for us.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from maml_cli.algorithms import IMAML
from maml_cli.data import SinusoidTasks
from maml_cli.data.tasks import TaskBatch
from maml_cli.engine.build import build_run
from maml_cli.engine.checkpoint import load_checkpoint
from maml_cli.engine.evaluation import score_tasks
from maml_cli.errors import ConfigError
from maml_cli.models import MLP, Conv4

from . import helpers
from .helpers import TINY, compose_train, run_cli


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def linear_tasks(tasks=3, support=12, query=7, dim=5, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return TaskBatch(
        randn(tasks, support, dim), randn(tasks, support, 1), randn(tasks, query, dim), randn(tasks, query, 1)
    )


def design(x: torch.Tensor) -> torch.Tensor:
    """Rows [x, 1]: nn.Linear's flattened parameters (weight, then bias) act on them."""
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)


def closed_form(theta: torch.Tensor, batch: TaskBatch, lam: float):
    """Per task: the minimiser of mse_support(phi) + lam/2 ||phi - theta||^2, the support Hessian,
    and the query loss at the minimiser. Differentiable in ``theta``."""
    phis, hessians, losses = [], [], []
    for t in range(batch.num_tasks):
        a, y = design(batch.support_x[t]), batch.support_y[t, :, 0]
        hessian = 2.0 / a.shape[0] * a.T @ a
        eye = torch.eye(a.shape[1], dtype=a.dtype)
        phi = torch.linalg.solve(hessian + lam * eye, lam * theta + 2.0 / a.shape[0] * a.T @ y)
        aq, yq = design(batch.query_x[t]), batch.query_y[t, :, 0]
        phis.append(phi)
        hessians.append(hessian)
        losses.append(((aq @ phi - yq) ** 2).mean())
    return phis, hessians, torch.stack(losses)


def linear_imaml(dim=5, seed=1, **kwargs) -> IMAML:
    torch.manual_seed(seed)
    model = nn.Linear(dim, 1).double()
    options = {"steps": 400, "lr": 0.1, "lam": 1.0, "cg_steps": 20, "cg_tol": 1e-13} | kwargs
    return IMAML(model, F.mse_loss, **options)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_implicit_meta_gradient_matches_the_closed_form_on_a_quadratic_inner_problem(strategy):
    batch = linear_tasks()
    algo = linear_imaml(task_batching=strategy)
    theta = torch.cat([p.detach().flatten() for p in algo.model.parameters()]).requires_grad_(True)
    phis, _, query_losses = closed_form(theta, batch, algo.lam)
    (exact,) = torch.autograd.grad(query_losses.mean(), theta)

    out = algo.meta_backward(batch)
    implicit = flat_grad(algo.model)
    assert rel(implicit, exact) <= 1e-9
    torch.testing.assert_close(out.loss_after, query_losses.detach(), rtol=1e-10, atol=0)

    # Treating d phi / d theta as the identity gives the mean query gradient at phi instead,
    # which is measurably different: the linear solve is doing work.
    algo.model.zero_grad()
    IMAML(algo.model, F.mse_loss, steps=400, lr=0.1, lam=1.0, first_order=True).meta_backward(batch)
    first_order = flat_grad(algo.model)
    phi = torch.stack([p.detach() for p in phis]).requires_grad_(True)
    aq = torch.stack([design(x) for x in batch.query_x])
    ((torch.einsum("tqd,td->tq", aq, phi) - batch.query_y[..., 0]) ** 2).mean(1).mean().backward()
    assert rel(first_order, phi.grad.sum(0)) <= 1e-9
    assert rel(first_order, exact) > 1e-2


def test_adapt_and_evaluate_solve_the_regularised_inner_problem():
    batch = linear_tasks(tasks=4, seed=2)
    algo = linear_imaml(eval_steps=3)
    theta = torch.cat([p.detach().flatten() for p in algo.model.parameters()])
    phis, _, _ = closed_form(theta, batch, algo.lam)
    adapted = algo.adapt(batch.support_x, batch.support_y, steps=400)
    flat = torch.cat([adapted["weight"].flatten(1), adapted["bias"]], dim=1)
    torch.testing.assert_close(flat, torch.stack(phis), rtol=1e-10, atol=1e-12)

    rows = algo.evaluate(batch, lambda out, y: ((out - y) ** 2).mean())
    assert rows.shape == (4, 4)
    for steps in range(4):
        params = algo.adapt(batch.support_x, batch.support_y, steps=steps)
        pred = algo.batched_forward(params, batch.query_x)
        torch.testing.assert_close(rows[steps], ((pred - batch.query_y) ** 2).mean(dim=(1, 2)))
    # The proximal term pulls back towards theta: with a huge lam, phi hardly moves.
    stiff = linear_imaml(lam=1e6, lr=1e-7).adapt(batch.support_x, batch.support_y, steps=5)
    assert (stiff["weight"] - algo.model.weight.detach()).abs().max() < 1e-5


def test_conjugate_gradient_error_falls_with_more_steps():
    batch = linear_tasks(tasks=1, support=10, dim=8, seed=3)
    base = linear_imaml(dim=8, lam=0.3, steps=1500, lr=0.1)
    theta = torch.cat([p.detach().flatten() for p in base.model.parameters()]).requires_grad_(True)
    phis, hessians, query_losses = closed_form(theta, batch, base.lam)
    (exact,) = torch.autograd.grad(query_losses.mean(), theta)
    # Spread-out curvature, so CG needs several iterations to resolve it.
    eig = torch.linalg.eigvalsh(torch.eye(9, dtype=torch.float64) + hessians[0] / base.lam)
    assert eig.max() / eig.min() > 10

    errors = []
    for cg_steps in (1, 2, 3, 4, 6, 30):
        base.model.zero_grad()
        IMAML(base.model, F.mse_loss, steps=1500, lr=0.1, lam=0.3, cg_steps=cg_steps, cg_tol=1e-13).meta_backward(batch)
        errors.append(rel(flat_grad(base.model), exact))
    # CG's error decreases monotonically in the Euclidean norm (Hestenes & Stiefel, 1952).
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 1e-2 and errors[-1] < 1e-9


def sinusoid_meta_grad(strategy: str, chunk: int = 0, **kwargs) -> tuple[torch.Tensor, object]:
    """The meta-gradient of a small MLP on sinusoid tasks (zeros where a parameter gets none)."""
    torch.manual_seed(0)
    model = MLP(1, 1, [16, 16]).double()
    dist = SinusoidTasks(shots=6, query=5, dtype=torch.float64)
    options = {"steps": 4, "lr": 0.02, "lam": 1.5, "cg_steps": 4} | kwargs
    algo = IMAML(model, dist.loss, task_batching=strategy, task_chunk=chunk, **options)
    out = algo.meta_backward(dist.sample(5, torch.Generator().manual_seed(1)))
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
    if kwargs.get("zero_head"):  # the head starts at zero for every task and is not meta-learned
        assert model.net[-1].weight.grad is None and torch.cat([g.flatten() for g in grads[:-2]]).norm() > 0
    return torch.cat([g.flatten() for g in grads]), out


@pytest.mark.parametrize(
    "options", [{}, {"cg_damping": 0.5, "cg_tol": 1e-3}, {"first_order": True}, {"zero_head": True}]
)
def test_vmap_and_loop_give_the_same_implicit_gradient(options):
    g_vmap, out_vmap = sinusoid_meta_grad("vmap", **options)
    g_loop, out_loop = sinusoid_meta_grad("loop", **options)
    g_chunked, _ = sinusoid_meta_grad("vmap", chunk=2, **options)  # chunks of 2, 2 and 1
    assert g_loop.norm() > 0
    assert rel(g_vmap, g_loop) <= 1e-10
    assert rel(g_chunked, g_loop) <= 1e-10
    torch.testing.assert_close(out_vmap.loss_after, out_loop.loss_after)
    torch.testing.assert_close(out_vmap.loss_before, out_loop.loss_before)


def test_cg_options_on_an_mlp_against_a_dense_solve():
    """Where ``I + H/lam`` is positive definite, enough CG steps reach the dense solution, with and
    without damping; a loose tolerance stops early and lands further away than 5 full steps."""
    torch.manual_seed(0)
    model = MLP(1, 1, [8, 8]).double()  # 97 parameters
    dist = SinusoidTasks(shots=6, query=5, dtype=torch.float64)
    batch = dist.sample(3, torch.Generator().manual_seed(1))

    def grad(**options):
        model.zero_grad()
        algo = IMAML(model, dist.loss, steps=4, lr=0.02, lam=10.0, task_batching="vmap", **options)
        algo.meta_backward(batch)
        return flat_grad(model), algo

    converged, algo = grad(cg_steps=150, cg_tol=1e-12)
    assert rel(converged, dense_implicit_gradient(algo, batch)) <= 1e-8
    damped, algo = grad(cg_steps=150, cg_tol=1e-12, cg_damping=0.5)
    assert rel(damped, dense_implicit_gradient(algo, batch, damping=0.5)) <= 1e-8
    assert rel(damped, converged) > 1e-2
    five, _ = grad(cg_steps=5)
    loose, _ = grad(cg_steps=150, cg_tol=0.5)
    assert rel(five, converged) < rel(loose, converged)


def test_cg_stops_at_negative_curvature_instead_of_stepping_without_bound():
    """Two tasks with a known diagonal Hessian: a positive definite one is solved exactly in three
    steps; for an indefinite one (1 + h/lam < 0 along the right-hand side) CG falls back to the
    right-hand side, the first-order gradient."""
    algo = IMAML(nn.Linear(1, 1), F.mse_loss, lam=1.0, cg_steps=3)
    hessian = torch.tensor([[1.0, 2.0, 3.0], [-10.0, -10.0, 0.5]], dtype=torch.float64)
    rhs = {"w": torch.tensor([[1.0, -1.0, 2.0], [1.0, 1.0, 1.0]], dtype=torch.float64)}
    solution = algo._conjugate_gradient(lambda v: {"w": hessian * v["w"]}, rhs, batched=True)
    torch.testing.assert_close(solution["w"][0], rhs["w"][0] / (1 + hessian[0]))
    torch.testing.assert_close(solution["w"][1], rhs["w"][1])
    # Each task alone (the loop strategy) follows the same iterations.
    for t in range(2):
        diagonal = hessian[t]
        alone = algo._conjugate_gradient(lambda v, h=diagonal: {"w": h * v["w"]}, {"w": rhs["w"][t]}, batched=False)
        torch.testing.assert_close(alone["w"], solution["w"][t])


image_batch = functools.partial(helpers.image_batch, tasks=2, query=2)


def dense_implicit_gradient(algo: IMAML, batch: TaskBatch, damping: float = 0.0) -> torch.Tensor:
    """Mean over tasks of ((1 + damping) I + H/lam)^-1 grad L_query at the inner loop's phi, with the Hessian
    formed as a dense matrix (per task, by the native, non-vmapped forward pass)."""
    phi = algo.adapt(batch.support_x, batch.support_y, steps=algo.steps)
    names = list(phi)
    shapes = [phi[k].shape[1:] for k in names]

    def loss_of(flat, x, y):
        chunks = torch.split(flat, [s.numel() for s in shapes])
        params = {k: c.reshape(s) for k, c, s in zip(names, chunks, shapes)}
        return algo.loss(algo.forward_with(params, x), y)

    total = 0.0
    for t in range(batch.num_tasks):
        flat = torch.cat([phi[k][t].flatten() for k in names])
        support = functools.partial(loss_of, x=batch.support_x[t], y=batch.support_y[t])
        hessian = torch.autograd.functional.hessian(support, flat)
        flat = flat.clone().requires_grad_(True)
        (query_grad,) = torch.autograd.grad(loss_of(flat, batch.query_x[t], batch.query_y[t]), flat)
        system = (1 + damping) * torch.eye(flat.numel(), dtype=flat.dtype) + hessian / algo.lam
        assert torch.linalg.eigvalsh(system).min() > 0  # CG's assumption holds at this phi
        total = total + torch.linalg.solve(system, query_grad)
    return total / batch.num_tasks


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_conv4_with_batch_norm_matches_a_dense_hessian_solve(strategy):
    torch.manual_seed(0)
    model = Conv4(1, 3, hidden=2, image_size=16).double()  # 159 parameters
    batch = image_batch(tasks=2, ways=3, shots=2, query=2, size=16)
    algo = IMAML(model, F.cross_entropy, steps=3, lr=0.1, lam=20.0, cg_steps=200, cg_tol=1e-12, task_batching=strategy)
    out = algo.meta_backward(batch)
    implicit = flat_grad(model)
    assert torch.isfinite(out.loss_after).all() and implicit.norm() > 0
    assert rel(implicit, dense_implicit_gradient(algo, batch)) <= 1e-8


def test_constructor_rejects_bad_values_with_the_key_to_fix():
    model = nn.Linear(2, 1)
    for kwargs, key in [
        ({"lam": 0.0}, "inner_loop.lam"),
        ({"lam": float("nan")}, "inner_loop.lam"),
        ({"cg_steps": 0}, "inner_loop.cg_steps"),
        ({"cg_steps": 2.5}, "inner_loop.cg_steps"),
        ({"cg_damping": -1.0}, "inner_loop.cg_damping"),
        ({"cg_tol": -1e-3}, "inner_loop.cg_tol"),
    ]:
        with pytest.raises(ValueError, match=key):
            IMAML(model, F.mse_loss, **kwargs)
    # Through the config and the builder it is a one-line ConfigError.
    with pytest.raises(ConfigError, match=r"inner_loop.lam must be a finite number > 0"):
        build_run(compose_train("inner_loop=imaml", "inner_loop.lam=-1"), torch.device("cpu"))


def test_preset_has_the_papers_omniglot_settings():
    cfg = compose_train("experiment=imaml_omniglot_5w1s")
    assert cfg.inner_loop._target_ == "maml_cli.algorithms.imaml.IMAML"
    assert (cfg.inner_loop.steps, cfg.inner_loop.lam, cfg.inner_loop.cg_steps) == (16, 2.0, 5)
    assert (cfg.dataset.ways, cfg.dataset.shots, cfg.model.hidden) == (5, 1, 64)


def test_train_and_eval_through_the_cli(tmp_path):
    args = ("inner_loop=imaml", "inner_loop.steps=3", "inner_loop.cg_steps=2", "trainer.progress=false")
    proc = run_cli("maml-train", *TINY, *args, "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["last"]["value"] > 0

    checkpoint = tmp_path / "run/checkpoints/last.pt"
    proc = run_cli("maml-eval", f"checkpoint={checkpoint}", "eval.episodes=10", "hydra.run.dir=ev", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "ev/eval.json").read_text())
    assert result["steps"] == 2 and result["episodes"] == 10

    # maml-eval adapts as iMAML does: the same numbers as the rebuilt algorithm gives in-process.
    state = load_checkpoint(checkpoint)
    run = build_run(OmegaConf.create(state["config"]), torch.device("cpu"))
    assert isinstance(run.algorithm, IMAML) and run.algorithm.lam == 2.0
    run.algorithm.load_state_dict(state["model"])
    scores = score_tasks(run.algorithm, run.tasks, "test", 10, steps=2, batch_size=100)
    for k in range(3):
        assert result["per_step"][k]["mean"] == pytest.approx(scores[k].mean().item(), rel=1e-5)
