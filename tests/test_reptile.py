"""Reptile: both task strategies agree, the inner loop is exactly torch.optim's Adam/SGD on the same
minibatches, the k=1 closed forms hold, memory is flat in the number of inner steps, and the CLI
trains and evaluates it."""

from __future__ import annotations

import json
from copy import deepcopy
from functools import partial

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from maml_cli.algorithms import MAML, Reptile
from maml_cli.algorithms.reptile import minibatch_order
from maml_cli.data import SinusoidTasks
from maml_cli.engine.build import build_run
from maml_cli.engine.checkpoint import load_checkpoint
from maml_cli.engine.evaluation import score_tasks
from maml_cli.engine.optim import build_optimizer, build_scheduler
from maml_cli.errors import ConfigError
from maml_cli.models import MLP, Conv4

from . import helpers
from .helpers import TINY, compose_train, run_cli

CPU = torch.device("cpu")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def sinusoid_setup(tasks=5, shots=10, query=5, seed=0):
    torch.manual_seed(seed)
    model = MLP(1, 1, [12, 12], activation="tanh").double()
    dist = SinusoidTasks(shots=shots, query=query, dtype=torch.float64)
    return model, dist, dist.sample(tasks, torch.Generator().manual_seed(seed + 1))


image_batch = partial(helpers.image_batch, query=2)


def reference_adaptation(model, loss_fn, x, y, order, steps, optimizer, lr, betas=(0.0, 0.999), eps=1e-8):
    """Plain PyTorch: a deep copy of the model trained by torch.optim on the minibatches
    ``x[order[t]]`` (all of ``x`` when ``order`` is None). Returns its parameters and the loss of
    every step, each before that step."""
    copy = deepcopy(model)
    if optimizer == "adam":
        opt = torch.optim.Adam(copy.parameters(), lr=lr, betas=betas, eps=eps)
    else:
        opt = torch.optim.SGD(copy.parameters(), lr=lr)
    losses = []
    for t in range(steps):
        index = slice(None) if order is None else order[t]
        opt.zero_grad()
        loss = loss_fn(copy(x[index]), y[index])
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return copy, losses


# -- both strategies -------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("inner_batch_size", [0, 3])
def test_vmap_and_loop_agree_in_float64(optimizer, inner_batch_size):
    model, dist, batch = sinusoid_setup()
    results = {}
    for strategy, chunk in (("vmap", 0), ("vmap", 2), ("loop", 0)):
        model.zero_grad()
        algo = Reptile(
            model,
            dist.loss,
            steps=4,
            lr=0.02 if optimizer == "adam" else 0.1,
            optimizer=optimizer,
            inner_batch_size=inner_batch_size,
            task_batching=strategy,
            task_chunk=chunk,
        )
        out = algo.meta_backward(batch, step=7)
        rows = algo.evaluate(batch, dist.metric, steps=3)
        adapted = algo.adapt(batch.support_x, batch.support_y, steps=3)
        results[strategy, chunk] = flat_grad(model), out, rows, adapted
    g_ref, out_ref, rows_ref, adapted_ref = results["loop", 0]
    assert g_ref.norm() > 0
    assert out_ref.loss_before.shape == out_ref.loss_after.shape == (5,)
    for key in (("vmap", 0), ("vmap", 2)):
        g, out, rows, adapted = results[key]
        assert rel(g, g_ref) <= 1e-12
        torch.testing.assert_close(out.loss_before, out_ref.loss_before, rtol=1e-12, atol=0)
        torch.testing.assert_close(out.loss_after, out_ref.loss_after, rtol=1e-12, atol=0)
        torch.testing.assert_close(rows, rows_ref, rtol=1e-12, atol=0)
        for name in adapted_ref:
            torch.testing.assert_close(adapted[name], adapted_ref[name], rtol=1e-12, atol=1e-15)


# -- against torch.optim ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_matches_torch_optim_on_a_deep_copy_with_the_same_minibatches(strategy, optimizer):
    model, dist, batch = sinusoid_setup(tasks=4, shots=10, query=6)
    lr, betas = (0.01, (0.0, 0.999)) if optimizer == "adam" else (0.05, (0.0, 0.999))
    steps, epsilon = 6, 0.5
    algo = Reptile(
        model,
        dist.loss,
        steps=steps,
        lr=lr,
        optimizer=optimizer,
        betas=betas,
        inner_batch_size=4,  # 6 steps x 4 = 24 draws: 2.4 passes over 10 points
        eval_inner_batch_size=3,
        task_batching=strategy,
    )
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    out = algo.meta_backward(batch, step=11)
    order = algo.training_order(batch.num_tasks, 10, step=11)
    assert order.shape == (4, steps, 4)

    phis, firsts, queries = [], [], []
    for t in range(batch.num_tasks):
        copy, losses = reference_adaptation(
            model, dist.loss, batch.support_x[t], batch.support_y[t], order[t], steps, optimizer, lr, betas
        )
        phis.append(dict(copy.named_parameters()))
        firsts.append(losses[0])
        with torch.no_grad():
            queries.append(dist.loss(copy(batch.query_x[t]), batch.query_y[t]))
    for name, p in model.named_parameters():
        mean_phi = torch.stack([phi[name].detach() for phi in phis]).mean(0)
        torch.testing.assert_close(p.grad, theta[name] - mean_phi, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(out.loss_before, torch.stack(firsts), rtol=1e-12, atol=0)
    torch.testing.assert_close(out.loss_after, torch.stack(queries), rtol=1e-10, atol=0)

    # The meta-optimizer turns the .grad into the paper's step: SGD with lr = epsilon gives
    # theta + epsilon * (mean phi - theta) (Algorithm 2).
    torch.optim.SGD(model.parameters(), lr=epsilon).step()
    for name, p in model.named_parameters():
        mean_phi = torch.stack([phi[name].detach() for phi in phis]).mean(0)
        expected = theta[name] + epsilon * (mean_phi - theta[name])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-14)

    # adapt() and evaluate() run the same optimizer, on their own minibatches of 3.
    eval_order = algo.evaluation_order(batch.num_tasks, 10, steps=5)
    adapted = algo.adapt(batch.support_x, batch.support_y, steps=5)
    rows = algo.evaluate(batch, dist.metric, steps=5)
    for t in range(batch.num_tasks):
        for k in (0, 2, 5):
            copy, _ = reference_adaptation(
                model, dist.loss, batch.support_x[t], batch.support_y[t], eval_order[t], k, optimizer, lr, betas
            )
            with torch.no_grad():
                expected_metric = dist.metric(copy(batch.query_x[t]), batch.query_y[t])
            torch.testing.assert_close(rows[k, t], expected_metric, rtol=1e-10, atol=1e-14)
            if k == 5:
                for name, p in copy.named_parameters():
                    torch.testing.assert_close(adapted[name][t], p.detach(), rtol=1e-10, atol=1e-14)
    assert rows[5].mean() < rows[0].mean()


# -- closed forms with one step --------------------------------------------------------------------


def _support_gradients(model, dist, batch) -> list[dict[str, torch.Tensor]]:
    grads = []
    for t in range(batch.num_tasks):
        loss = dist.loss(model(batch.support_x[t]), batch.support_y[t])
        names, params = zip(*model.named_parameters())
        grads.append(dict(zip(names, torch.autograd.grad(loss, params))))
    return grads


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_one_full_batch_sgd_step_is_lr_times_the_support_gradient(strategy):
    """k = 1: theta - phi_i = lr * grad L_support_i(theta), so .grad = lr * mean_i grad L_i (Sec. 5:
    Reptile with one step is joint training on the expected loss)."""
    model, dist, batch = sinusoid_setup(tasks=4)
    grads = _support_gradients(model, dist, batch)
    algo = Reptile(model, dist.loss, steps=1, lr=0.05, optimizer="sgd", inner_batch_size=0, task_batching=strategy)
    algo.meta_backward(batch)
    for name, p in model.named_parameters():
        expected = 0.05 * torch.stack([g[name] for g in grads]).mean(0)
        torch.testing.assert_close(p.grad, expected, rtol=1e-12, atol=1e-16)


def test_one_adam_step_is_lr_times_the_normalised_gradient():
    """Adam's first step: m_hat = g and sqrt(v_hat) = |g| whatever the betas, so
    theta - phi = lr * g / (|g| + eps), close to lr * sign(g)."""
    model, dist, batch = sinusoid_setup(tasks=3)
    grads = _support_gradients(model, dist, batch)
    lr, eps = 0.01, 1e-3
    algo = Reptile(model, dist.loss, steps=1, lr=lr, optimizer="adam", betas=(0.5, 0.9), eps=eps)
    algo.meta_backward(batch)
    for name, p in model.named_parameters():
        expected = torch.stack([lr * g[name] / (g[name].abs() + eps) for g in grads]).mean(0)
        torch.testing.assert_close(p.grad, expected, rtol=1e-12, atol=1e-16)


# -- minibatches -----------------------------------------------------------------------------------


def test_minibatch_order_passes_through_the_support_set_without_replacement():
    order = minibatch_order(3, 5, steps=4, batch_size=3, generator=torch.Generator().manual_seed(0))
    assert order.shape == (3, 4, 3)
    flat = order.reshape(3, 12)
    for t in range(3):
        for start in (0, 5):  # the two complete passes of the 12 draws
            assert sorted(flat[t, start : start + 5].tolist()) == list(range(5))
    assert not torch.equal(flat[0], flat[1])  # each task has its own shuffle
    assert minibatch_order(3, 5, 4, 0, torch.Generator()) is None
    assert minibatch_order(3, 5, 4, 5, torch.Generator()) is None  # a minibatch as large as the set


def test_minibatches_are_seeded_by_seed_and_meta_step():
    model, dist, batch = sinusoid_setup()

    def grad(step, seed=0):
        model.zero_grad()
        Reptile(model, dist.loss, steps=3, inner_batch_size=2, seed=seed).meta_backward(batch, step=step)
        return flat_grad(model)

    assert torch.equal(grad(3), grad(3))
    assert rel(grad(3), grad(4)) > 1e-3
    assert rel(grad(3, seed=1), grad(3)) > 1e-3
    algo = Reptile(model, dist.loss, steps=3, inner_batch_size=2, eval_steps=4)
    assert torch.equal(algo.evaluate(batch, dist.metric), algo.evaluate(batch, dist.metric))


# -- Conv-4 ----------------------------------------------------------------------------------------


def _split_conv_biases(model: nn.Module, grads: dict[str, torch.Tensor]):
    """Conv-4's convolution biases feed batch norm, which removes any constant: their gradient is
    zero but for rounding (~1e-17), and Adam divides that noise by ``sqrt(v) + eps`` ~ 1e-8, so
    their updates are rounding noise times 1e9 (~1e-10 after 3 steps). Compare them apart."""
    biases = {f"features.{i}.0.bias" for i in range(4)}
    assert biases <= set(grads)
    rest = torch.cat([g.flatten() for name, g in grads.items() if name not in biases])
    noise = torch.cat([grads[name].flatten() for name in sorted(biases)])
    return rest, noise


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_conv4_strategies_agree_and_match_torch_optim(optimizer):
    torch.manual_seed(0)
    model = Conv4(1, 3, hidden=8, image_size=16).double()
    batch = image_batch()
    loss = nn.functional.cross_entropy
    grads, rows = {}, {}
    for strategy in ("vmap", "loop"):
        model.zero_grad()
        algo = Reptile(
            model, loss, steps=3, lr=0.01, optimizer=optimizer, inner_batch_size=4, eval_steps=2, task_batching=strategy
        )
        algo.meta_backward(batch, step=2)
        grads[strategy] = {name: p.grad.clone() for name, p in model.named_parameters()}
        rows[strategy] = algo.evaluate(batch, lambda out, y: (out.argmax(-1) == y).double().mean())
    torch.testing.assert_close(rows["vmap"], rows["loop"])
    assert rows["loop"].shape == (3, 3)

    order = algo.training_order(3, 6, step=2)
    phis = []
    for t in range(3):
        copy, _ = reference_adaptation(
            model, loss, batch.support_x[t], batch.support_y[t], order[t], 3, optimizer, 0.01
        )
        phis.append(dict(copy.named_parameters()))
    expected = {
        name: p.detach() - torch.stack([phi[name].detach() for phi in phis]).mean(0)
        for name, p in model.named_parameters()
    }
    rest_ref, noise_ref = _split_conv_biases(model, expected)
    assert rest_ref.norm() > 1e-3
    for strategy in ("vmap", "loop"):
        rest, noise = _split_conv_biases(model, grads[strategy])
        assert rel(rest, rest_ref) <= 1e-12
        assert noise.abs().max() < 1e-8 and noise_ref.abs().max() < 1e-8


# -- memory ----------------------------------------------------------------------------------------


class _SavedBytes:
    """Counts the bytes autograd holds for backward at any moment, and their peak."""

    def __init__(self):
        self.live = self.peak = 0

    def hooks(self):
        counter = self

        class Held:
            def __init__(self, tensor):
                self.tensor, self.size = tensor, tensor.numel() * tensor.element_size()
                counter.live += self.size
                counter.peak = max(counter.peak, counter.live)

            def __del__(self):
                counter.live -= self.size

        return torch.autograd.graph.saved_tensors_hooks(Held, lambda held: held.tensor)


def _peak_saved_bytes(algo, batch) -> int:
    counter = _SavedBytes()
    with counter.hooks():
        algo.meta_backward(batch)
    return counter.peak


def test_memory_does_not_grow_with_the_number_of_inner_steps():
    """Each inner step's graph is freed before the next: the peak of what autograd saves is the
    same for 2 and 12 steps. Second-order MAML, which keeps the whole inner loop, grows."""
    model, dist, batch = sinusoid_setup(tasks=2)

    def reptile(steps):
        return Reptile(model, dist.loss, steps=steps, inner_batch_size=5, task_batching="loop")

    assert _peak_saved_bytes(reptile(2), batch) == _peak_saved_bytes(reptile(12), batch) > 0

    def maml(steps):
        return MAML(model, dist.loss, steps=steps, lr=0.01, task_batching="loop")

    assert _peak_saved_bytes(maml(12), batch) > 3 * _peak_saved_bytes(maml(2), batch)


# -- arguments and configs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"optimizer": "rmsprop"}, "inner_loop.optimizer must be one of adam, sgd, got 'rmsprop'"),
        ({"lr": -0.1}, "inner_loop.lr must be a finite number > 0"),
        ({"lr": float("nan")}, "inner_loop.lr must be a finite number > 0"),
        ({"steps": 0}, "inner_loop.steps must be an integer >= 1"),
        ({"betas": (0.9, 1.0)}, "inner_loop.betas must be two numbers in [0, 1)"),
        ({"betas": (0.9,)}, "inner_loop.betas must be two numbers in [0, 1)"),
        ({"eps": -1e-8}, "inner_loop.eps must be a finite number >= 0"),
        ({"inner_batch_size": -1}, "inner_loop.inner_batch_size must be an integer >= 0"),
        ({"eval_inner_batch_size": 2.5}, "inner_loop.eval_inner_batch_size must be an integer >= 0"),
        ({"eval_steps": -1}, "inner_loop.eval_steps must be an integer >= 0"),
        ({"first_order": False}, "inner_loop.first_order=false is not available for Reptile"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        Reptile(MLP(1, 1, [4]), nn.functional.mse_loss, **kwargs)
    assert fragment in str(info.value)


def test_a_bad_value_on_the_command_line_becomes_a_config_error():
    cfg = compose_train("inner_loop=reptile", "inner_loop.optimizer=adagrad")
    with pytest.raises(ConfigError, match="inner_loop.optimizer must be one of adam, sgd, got 'adagrad'"):
        build_run(cfg, CPU)


def test_omniglot_preset_has_the_papers_settings():
    cfg = compose_train("experiment=reptile_omniglot_5w1s", "seed=3")
    assert (cfg.dataset.ways, cfg.dataset.shots, cfg.dataset.eval_shots) == (5, 10, 1)
    assert (cfg.trainer.meta_batch_size, cfg.trainer.max_steps) == (5, 100_000)
    inner = OmegaConf.to_container(cfg.inner_loop, resolve=True, enum_to_str=True)
    algo = instantiate(inner, model=Conv4(1, 5, hidden=4), loss=nn.functional.cross_entropy)
    assert isinstance(algo, Reptile)
    assert algo.inner_optimizer.name == "adam" and algo.inner_optimizer.betas == (0.0, 0.999)
    assert (algo.steps, algo.lr, algo.inner_batch_size) == (5, 0.001, 10)
    assert (algo.eval_steps, algo.eval_inner_batch_size, algo.seed) == (50, 5, 3)
    optimizer = build_optimizer(cfg.optimizer, algo.parameters())
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.0
    scheduler = build_scheduler(cfg.optimizer, optimizer, int(cfg.trainer.max_steps))
    assert optimizer.param_groups[0]["lr"] == 1.0  # epsilon, annealed to 0 by the schedule
    factor = scheduler.lr_lambdas[0]
    assert factor(50_000) == pytest.approx(0.5) and factor(100_000) == pytest.approx(0.0)


def test_sinusoid_preset_takes_the_papers_outer_step_through_the_engine():
    """Built as maml-train builds it: one meta-step with the preset's SGD (lr = epsilon = 0.1)
    moves theta to theta + 0.1 (phi - theta), phi being 5 SGD steps on minibatches of 10 of 50."""
    cfg = compose_train("experiment=reptile_sinusoid")
    torch.manual_seed(0)
    run = build_run(cfg, CPU)
    algo, model = run.algorithm, run.algorithm.model
    assert isinstance(algo, Reptile) and algo.inner_optimizer.name == "sgd"
    optimizer = build_optimizer(cfg.optimizer, algo.parameters())
    batch = run.tasks.sample(1, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (1, 50, 1)
    initial = deepcopy(model)
    optimizer.zero_grad()
    algo.meta_backward(batch, step=0)
    optimizer.step()
    order = algo.training_order(1, 50, step=0)
    assert order.shape == (1, 5, 10)
    phi, _ = reference_adaptation(
        initial, run.tasks.loss, batch.support_x[0], batch.support_y[0], order[0], 5, "sgd", 0.02
    )
    phi_params = dict(phi.named_parameters())
    for name, theta in initial.named_parameters():
        expected = theta + 0.1 * (phi_params[name] - theta)
        torch.testing.assert_close(dict(model.named_parameters())[name].detach(), expected.detach())


# -- the CLI ---------------------------------------------------------------------------------------


def test_train_and_eval_through_the_cli(tmp_path):
    overrides = (*TINY, "inner_loop=reptile", "inner_loop.inner_batch_size=4", "trainer.progress=false")
    trained = run_cli("maml-train", *overrides, "hydra.run.dir=run", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    last = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert last["step"] == 6 and (tmp_path / "run/checkpoints/best.pt").exists()
    assert last["config"]["inner_loop"]["_target_"] == "maml_cli.algorithms.reptile.Reptile"
    assert last["config"]["inner_loop"]["seed"] == 0  # ${seed}, resolved into the checkpoint

    out = tmp_path / "eval.json"
    evaluated = run_cli(
        "maml-eval",
        f"checkpoint={tmp_path / 'run/checkpoints/last.pt'}",
        "eval.episodes=20",
        f"eval.output={out}",
        "hydra.run.dir=ev",
        cwd=tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(out.read_text())
    assert result["steps"] == 2 and result["episodes"] == 20

    # maml-eval scored Reptile's own adaptation (Adam on the support set), not MAML's SGD step.
    run = build_run(OmegaConf.create(last["config"]), CPU)
    run.algorithm.load_state_dict(last["model"])
    scores = score_tasks(run.algorithm, run.tasks, "test", 20, steps=2, batch_size=100)
    assert [row["mean"] for row in result["per_step"]] == pytest.approx(scores.double().mean(1).tolist(), rel=1e-6)
    batch = next(run.tasks.held_out("test", 20, 100))
    sgd_rows = MAML.evaluate(run.algorithm, batch, run.tasks.metric, steps=2)
    assert abs(sgd_rows[2].mean().item() - result["mean"]) > 1e-6
