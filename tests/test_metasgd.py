"""Meta-SGD: the meta-gradient with respect to the initialisation theta and the learned rates alpha
(vmap against loop, finite differences, the first-order closed form), the paper's initialisation,
and alpha's way through maml-train's checkpoint into maml-eval."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from maml_cli.algorithms import ANIL, MAML, MetaSGD
from maml_cli.data import SinusoidTasks
from maml_cli.data.tasks import TaskBatch
from maml_cli.engine.build import build_run
from maml_cli.engine.checkpoint import load_checkpoint, save_checkpoint
from maml_cli.engine.evaluation import score_tasks
from maml_cli.models import MLP, Conv4

from .helpers import TINY, Tiny, compose_train, run_cli


class AnilMetaSGD(MetaSGD, ANIL):
    """Meta-SGD on ANIL's head only: ANIL's constructor runs first (through ``super()``), so
    ``initial_params`` already names the head when MetaSGD sizes alpha."""


def scramble_rates(algo: MetaSGD, seed: int) -> None:
    """Give every entry of alpha its own value, so a mix-up of entries or shapes would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for rate in algo.inner_lrs.values():
            rate.copy_(0.02 + 0.2 * torch.rand(rate.shape, generator=g, dtype=rate.dtype))


def theta_and_alpha_grads(algo: MetaSGD) -> tuple[torch.Tensor, torch.Tensor]:
    theta = torch.cat([p.grad.flatten() for p in algo.model.parameters()])
    alpha = torch.cat([r.grad.flatten() for r in algo.inner_lrs.values()])
    return theta, alpha


def meta_grads(algo: MetaSGD, batch: TaskBatch, strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
    algo.zero_grad(set_to_none=True)
    algo.task_batching = strategy
    algo.meta_backward(batch)
    return theta_and_alpha_grads(algo)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def sinusoid_setup(seed=0, hidden=(16, 16), model=None, **kwargs):
    torch.manual_seed(seed)
    dist = SinusoidTasks(shots=5, query=7, dtype=torch.float64)
    algo = MetaSGD((model or MLP(1, 1, list(hidden))).double(), dist.loss, **kwargs)
    scramble_rates(algo, seed)
    return algo, dist.sample(5, torch.Generator().manual_seed(seed + 1))


# -- the meta-gradient ---------------------------------------------------------------------------


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
def test_vmap_and_loop_give_the_same_meta_gradient_for_theta_and_alpha(first_order, steps):
    algo, batch = sinusoid_setup(steps=steps, first_order=first_order)
    theta_vmap, alpha_vmap = meta_grads(algo, batch, "vmap")
    theta_loop, alpha_loop = meta_grads(algo, batch, "loop")
    assert alpha_loop.norm() > 0 and theta_loop.norm() > 0
    assert rel_diff(theta_vmap, theta_loop) <= 1e-12
    assert rel_diff(alpha_vmap, alpha_loop) <= 1e-12


def test_task_chunks_accumulate_to_the_whole_batch_gradient():
    algo, batch = sinusoid_setup(steps=2)
    whole = meta_grads(algo, batch, "vmap")
    algo.task_chunk = 2  # chunks of 2, 2 and 1 tasks
    chunked = meta_grads(algo, batch, "vmap")
    for a, b in zip(chunked, whole):
        assert rel_diff(a, b) <= 1e-12


def test_conv4_vmap_and_loop_agree_with_batch_norm_rates_included():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3)
    batch = TaskBatch(
        torch.randn(2, 3, 1, 16, 16, generator=g, dtype=torch.float64),
        labels.expand(2, -1),
        torch.randn(2, 6, 1, 16, 16, generator=g, dtype=torch.float64),
        labels.repeat_interleave(2).expand(2, -1),
    )
    model = Conv4(1, 3, hidden=4, image_size=16).double()
    algo = MetaSGD(model, nn.functional.cross_entropy, steps=2)
    scramble_rates(algo, 1)
    assert set(algo.inner_lrs) == {name.replace(".", "/") for name, _ in model.named_parameters()}
    theta_vmap, alpha_vmap = meta_grads(algo, batch, "vmap")
    theta_loop, alpha_loop = meta_grads(algo, batch, "loop")
    assert alpha_loop.norm() > 0
    assert rel_diff(theta_vmap, theta_loop) <= 1e-10
    assert rel_diff(alpha_vmap, alpha_loop) <= 1e-10


def reference_meta_loss(model: nn.Module, batch: TaskBatch, theta: torch.Tensor, alpha: dict, steps: int):
    """Mean query loss after ``steps`` updates ``w <- w - alpha o grad L_support(w)`` (Li et al.,
    2017, Algorithm 1), written out by hand; parameters without an entry in ``alpha`` stay put."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    losses = []
    for t in range(batch.num_tasks):
        chunks = torch.split(theta, [s.numel() for s in shapes])
        params = {n: c.reshape(s).clone().requires_grad_(True) for n, c, s in zip(names, chunks, shapes)}
        for _ in range(steps):
            pred = torch.func.functional_call(model, params, (batch.support_x[t],))
            grads = torch.autograd.grad(nn.functional.mse_loss(pred, batch.support_y[t]), list(params.values()))
            params = {
                n: (p - alpha[n] * g if n in alpha else p).detach().requires_grad_(True)
                for (n, p), g in zip(params.items(), grads)
            }
        pred = torch.func.functional_call(model, params, (batch.query_x[t],))
        losses.append(nn.functional.mse_loss(pred, batch.query_y[t]).detach())
    return torch.stack(losses).mean()


def finite_differences(model, batch, alpha: dict, steps: int, eps=1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences of :func:`reference_meta_loss` in every coordinate of theta and alpha."""
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    rate_names = list(alpha)
    rates = torch.cat([alpha[n].detach().flatten() for n in rate_names])

    def loss_at(theta_, rates_):
        chunks = torch.split(rates_, [alpha[n].numel() for n in rate_names])
        return reference_meta_loss(
            model, batch, theta_, {n: c.view_as(alpha[n]) for n, c in zip(rate_names, chunks)}, steps
        )

    def central(vector, f):
        out = torch.empty_like(vector)
        for i in range(vector.numel()):
            step = torch.zeros_like(vector)
            step[i] = eps
            out[i] = (f(vector + step) - f(vector - step)) / (2 * eps)
        return out

    return central(theta, lambda v: loss_at(v, rates)), central(rates, lambda v: loss_at(theta, v))


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_second_order_meta_gradient_matches_finite_differences(strategy):
    torch.manual_seed(3)
    dist = SinusoidTasks(shots=4, query=5, dtype=torch.float64)
    batch = dist.sample(3, torch.Generator().manual_seed(5))
    algo = MetaSGD(Tiny().double(), dist.loss, steps=2, task_batching=strategy)
    scramble_rates(algo, 3)
    theta_grad, alpha_grad = meta_grads(algo, batch, strategy)

    alpha = {name: algo.inner_lr(name) for name, _ in algo.model.named_parameters()}
    theta_fd, alpha_fd = finite_differences(algo.model, batch, alpha, steps=2)
    assert rel_diff(theta_grad, theta_fd) <= 1e-6
    assert rel_diff(alpha_grad, alpha_fd) <= 1e-6

    # The first-order variant drops the Hessian terms, so it must miss the finite differences.
    algo.first_order = True
    theta_first, alpha_first = meta_grads(algo, batch, strategy)
    assert rel_diff(theta_first, theta_fd) > 1e-3 and rel_diff(alpha_first, alpha_fd) > 1e-3


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_first_order_gradient_is_the_closed_form(strategy):
    """One first-order step: dL/dtheta = grad q(theta') and dL/dalpha = -grad s(theta) o grad q(theta'),
    averaged over tasks, with theta' = theta - alpha o grad s(theta)."""
    algo, batch = sinusoid_setup(seed=2, steps=1, first_order=True)
    theta_grad, alpha_grad = meta_grads(algo, batch, strategy)

    names = [n for n, _ in algo.model.named_parameters()]
    theta = {n: p.detach() for n, p in algo.model.named_parameters()}
    expected_theta, expected_alpha = [], []
    for t in range(batch.num_tasks):
        w = {n: v.clone().requires_grad_(True) for n, v in theta.items()}
        support = nn.functional.mse_loss(
            torch.func.functional_call(algo.model, w, (batch.support_x[t],)), batch.support_y[t]
        )
        g_s = dict(zip(names, torch.autograd.grad(support, list(w.values()))))
        adapted = {n: (theta[n] - algo.inner_lr(n).detach() * g_s[n]).requires_grad_(True) for n in names}
        query = nn.functional.mse_loss(
            torch.func.functional_call(algo.model, adapted, (batch.query_x[t],)), batch.query_y[t]
        )
        g_q = dict(zip(names, torch.autograd.grad(query, list(adapted.values()))))
        expected_theta.append(torch.cat([g_q[n].flatten() for n in names]))
        expected_alpha.append(torch.cat([(-g_s[n] * g_q[n]).flatten() for n in names]))
    assert rel_diff(theta_grad, torch.stack(expected_theta).mean(0)) <= 1e-12
    assert rel_diff(alpha_grad, torch.stack(expected_alpha).mean(0)) <= 1e-12


def test_anil_style_subset_gets_rates_for_the_head_only_and_exact_gradients():
    torch.manual_seed(4)
    dist = SinusoidTasks(shots=4, query=5, dtype=torch.float64)
    batch = dist.sample(3, torch.Generator().manual_seed(6))
    algo = AnilMetaSGD(Tiny().double(), dist.loss, steps=2, lr=0.1, lr_init_range=None)
    assert list(algo.inner_lrs) == ["out/weight", "out/bias"]
    scramble_rates(algo, 4)
    alpha = {name: algo.inner_lr(name) for name in ("out.weight", "out.bias")}
    theta_fd, alpha_fd = finite_differences(algo.model, batch, alpha, steps=2)
    for strategy in ("vmap", "loop"):
        theta_grad, alpha_grad = meta_grads(algo, batch, strategy)
        assert rel_diff(theta_grad, theta_fd) <= 1e-6
        assert rel_diff(alpha_grad, alpha_fd) <= 1e-6


def test_constant_rates_reproduce_maml():
    """With every entry of alpha equal to MAML's lr, theta's meta-gradient and the adaptation are
    MAML's, and the rates' gradients sum to the derivative of MAML's meta-loss in its lr."""
    torch.manual_seed(0)
    dist = SinusoidTasks(shots=5, query=7, dtype=torch.float64)
    batch = dist.sample(4, torch.Generator().manual_seed(1))
    model = MLP(1, 1, [8]).double()
    lr, eps = 0.05, 1e-6
    metasgd = MetaSGD(model, dist.loss, steps=2, lr=lr, lr_init_range=None, eval_steps=3)
    theta_grad, alpha_grad = meta_grads(metasgd, batch, "vmap")
    model.zero_grad()
    MAML(model, dist.loss, steps=2, lr=lr).meta_backward(batch)
    assert rel_diff(theta_grad, torch.cat([p.grad.flatten() for p in model.parameters()])) <= 1e-12

    def maml_loss(rate):
        return MAML(model, dist.loss, steps=2, lr=rate).evaluate(batch, dist.metric, steps=2)[-1].mean()

    d_lr = (maml_loss(lr + eps) - maml_loss(lr - eps)) / (2 * eps)
    assert alpha_grad.sum().item() == pytest.approx(d_lr.item(), rel=1e-6)
    rows = MAML(model, dist.loss, lr=lr).evaluate(batch, dist.metric, steps=3)
    torch.testing.assert_close(metasgd.evaluate(batch, dist.metric), rows, rtol=1e-12, atol=0)


# -- initialisation and configuration ---------------------------------------------------------------


def test_rates_start_at_lr_or_one_draw_from_the_papers_range():
    model = MLP(1, 1, [8, 8]).double()
    constant = MetaSGD(model, nn.functional.mse_loss, lr=0.03, lr_init_range=None)
    for name, p in model.named_parameters():
        rate = constant.inner_lr(name)
        assert rate.shape == p.shape and rate.dtype == torch.float64
        assert torch.all(rate == 0.03)

    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        algo = MetaSGD(model, nn.functional.mse_loss, lr_init_range=(0.005, 0.1))
        values = torch.cat([r.detach().flatten() for r in algo.inner_lrs.values()])
        assert torch.all(values == values[0])  # one value for every entry, as in the paper
        assert 0.005 <= values[0].item() <= 0.1 and algo.lr == values[0].item()
        draws.append(algo.lr)
    assert draws[0] == draws[1] != draws[2]  # seeded by the run's seed


@pytest.mark.parametrize("bad", [(0.1, 0.01), (-0.1, 0.1), (0.1,), (0.0, float("inf"))])
def test_bad_init_range_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"inner_loop.lr_init_range must be \[low, high\]"):
        MetaSGD(MLP(), nn.functional.mse_loss, lr_init_range=bad)


def test_rates_are_parameters_in_the_state_dict_and_restored():
    cfg = compose_train("inner_loop=metasgd", "model.hidden_sizes=[8]")
    torch.manual_seed(0)
    algo = build_run(cfg, torch.device("cpu")).algorithm
    assert isinstance(algo, MetaSGD) and cfg.inner_loop.lr_init_range == [0.005, 0.1]
    rate_ids = {id(r) for r in algo.inner_lrs.values()}
    assert rate_ids <= {id(p) for p in algo.parameters()}
    assert {"inner_lrs.net/0/weight", "inner_lrs.net/2/bias"} <= set(algo.state_dict())
    scramble_rates(algo, 7)
    torch.manual_seed(1)
    other = build_run(cfg, torch.device("cpu")).algorithm
    other.load_state_dict(algo.state_dict())
    for name, _ in algo.model.named_parameters():
        torch.testing.assert_close(other.inner_lr(name), algo.inner_lr(name), rtol=0, atol=0)


# -- through the commands ---------------------------------------------------------------------------


def test_rates_are_trained_checkpointed_and_used_by_maml_eval(tmp_path):
    proc = run_cli(
        "maml-train",
        *TINY,
        "inner_loop=metasgd",
        "inner_loop.lr_init_range=null",
        "inner_loop.lr=0.01",
        "optimizer.lr=0.01",
        "trainer.progress=false",
        "trainer.figures=false",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    last = tmp_path / "run/checkpoints/last.pt"
    state = load_checkpoint(last)
    rates = {k: v for k, v in state["model"].items() if k.startswith("inner_lrs.")}
    assert set(rates) == {f"inner_lrs.net/{i}/{w}" for i in (0, 2, 4) for w in ("weight", "bias")}
    # Six Adam steps of 0.01 move every rate well away from where it started.
    assert min((r - 0.01).abs().max().item() for r in rates.values()) > 1e-3

    # No adaptation with alpha = 0: the score after the step is the score before it.
    zeroed = tmp_path / "zeroed.pt"
    save_checkpoint(state | {"model": state["model"] | {k: torch.zeros_like(v) for k, v in rates.items()}}, zeroed)

    def evaluate(checkpoint, name):
        out = tmp_path / f"{name}.json"
        args = (
            f"checkpoint={checkpoint}",
            "eval.episodes=20",
            "eval.steps=1",
            f"eval.output={out}",
            f"hydra.run.dir={name}",
        )
        proc = run_cli("maml-eval", *args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return json.loads(out.read_text())

    trained, without_rates = evaluate(last, "trained"), evaluate(zeroed, "zeroed")
    assert trained["steps"] == 1
    assert without_rates["pre_adaptation_mean"] == trained["pre_adaptation_mean"]
    assert without_rates["mean"] == without_rates["pre_adaptation_mean"]
    assert trained["mean"] != trained["pre_adaptation_mean"]

    # maml-eval's figure is the one the checkpoint's theta and alpha give in-process.
    run = build_run(OmegaConf.create(state["config"]), torch.device("cpu"))
    run.algorithm.load_state_dict(state["model"])
    expected = score_tasks(run.algorithm, run.tasks, "test", 20, steps=1, batch_size=100)[-1].double().mean()
    assert trained["mean"] == pytest.approx(expected.item(), rel=1e-6)
