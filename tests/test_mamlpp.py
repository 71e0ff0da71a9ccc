"""MAML++: the multi-step loss schedule, learned per-step rates, per-step batch norm, derivative-order
annealing and cosine annealing, held to hand-written references, finite differences and each other."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from maml_cli.algorithms import MAML, MAMLPlusPlus
from maml_cli.algorithms.mamlpp import multi_step_loss_weights
from maml_cli.data import SinusoidTasks
from maml_cli.engine.build import build_run
from maml_cli.engine.checkpoint import load_checkpoint
from maml_cli.errors import ConfigError
from maml_cli.models import MLP, Conv4
from maml_cli.models.per_step_norm import PerStepBatchNorm

from .helpers import compose_train, image_batch, run_cli


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def all_grads(algo: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in algo.named_parameters() if p.grad is not None}


# -- MSL: the schedule -------------------------------------------------------------------------


def official_weights(n: int, epoch: int, msl_epochs: int) -> list[float]:
    """The MAML++ code's get_per_step_loss_importance_vector, transcribed in its own terms."""
    weights = [1.0 / n] * n
    decay = 1.0 / n / msl_epochs
    floor = 0.03 / n
    for i in range(n - 1):
        weights[i] = max(weights[i] - epoch * decay, floor)
    weights[-1] = min(weights[-1] + epoch * (n - 1) * decay, 1.0 - (n - 1) * floor)
    return weights


def test_msl_weights_at_given_steps():
    # 5 steps annealed over 100 meta-steps: uniform, half-way, at the floor, then the last step only.
    assert multi_step_loss_weights(5, 0, 100) == pytest.approx([0.2] * 5)
    assert multi_step_loss_weights(5, 50, 100) == pytest.approx([0.1] * 4 + [0.6])
    assert multi_step_loss_weights(5, 99, 100) == pytest.approx([0.006] * 4 + [0.976])
    assert multi_step_loss_weights(5, 100, 100) == [0.0] * 4 + [1.0]
    assert multi_step_loss_weights(5, 7, 0) == [0.0] * 4 + [1.0]  # msl off
    assert multi_step_loss_weights(1, 3, 10) == [1.0]
    for step in range(0, 100, 7):
        assert sum(multi_step_loss_weights(5, step, 100)) == pytest.approx(1.0)


def test_msl_weights_match_the_official_code_at_epoch_boundaries():
    # Official: 10 MSL epochs of 500 iterations; ours counts meta-steps, so msl_steps = 5000.
    for n in (2, 5):
        for epoch in range(10):
            ours = multi_step_loss_weights(n, epoch * 500, 5000)
            assert ours == pytest.approx(official_weights(n, epoch, 10), abs=1e-15)


# -- vmap and loop agree on the whole combination ------------------------------------------------


def mamlpp_conv(strategy: str, chunk: int = 0, **kwargs) -> MAMLPlusPlus:
    torch.manual_seed(0)
    model = Conv4(1, 3, hidden=6, image_size=16).double()
    options = {"steps": 3, "lr": 0.3, "msl_steps": 10, "first_order_steps": 1} | kwargs
    algo = MAMLPlusPlus(model, F.cross_entropy, task_batching=strategy, task_chunk=chunk, **options)
    with torch.no_grad():  # make every per-step BN set and rate different from the others
        for layer in algo.norms:
            layer.weight.add_(0.2 * torch.randn_like(layer.weight))
            layer.bias.add_(0.2 * torch.randn_like(layer.bias))
        for rates in algo.inner_lrs.values():
            rates.mul_(1 + 0.5 * torch.rand_like(rates))
    return algo


@pytest.mark.parametrize("meta_step", [0, 4])  # first order with MSL, then second order with MSL
def test_vmap_and_loop_agree_on_the_full_combination(meta_step):
    batch = image_batch(tasks=4)
    results = {}
    for strategy, chunk in (("vmap", 0), ("loop", 0), ("vmap", 3)):
        algo = mamlpp_conv(strategy, chunk)
        out = algo.meta_backward(batch, step=meta_step)
        buffers = {name: b.clone() for name, b in algo.named_buffers()}
        results[(strategy, chunk)] = (all_grads(algo), out, buffers)
    grads, out, buffers = results[("loop", 0)]
    assert len(grads) == len(list(mamlpp_conv("loop").parameters()))  # every parameter got one
    assert any(name.startswith("inner_lrs.") for name in grads)
    for key in (("vmap", 0), ("vmap", 3)):
        other_grads, other_out, other_buffers = results[key]
        flat = torch.cat([g.flatten() for g in grads.values()])
        assert rel(torch.cat([other_grads[name].flatten() for name in grads]), flat) <= 1e-12, key
        for name, g in grads.items():  # each part too (a conv bias before batch norm has none)
            torch.testing.assert_close(other_grads[name], g, rtol=1e-10, atol=1e-14 * flat.norm().item())
        for name in ("inner_lrs.head-weight", "model.features.1.1.weight", "model.head.weight"):
            assert grads[name].norm() > 1e-6 * flat.norm(), name
        torch.testing.assert_close(other_out.loss_after, out.loss_after, rtol=1e-13, atol=0)
        torch.testing.assert_close(other_out.loss_before, out.loss_before, rtol=1e-13, atol=0)
        for name, b in buffers.items():
            torch.testing.assert_close(other_buffers[name], b, rtol=1e-13, atol=1e-15)


# -- meta-gradient vs finite differences: LSLR, MSL and BNWB, second order -----------------------


class TinyBN(nn.Module):
    """(x, x^2)-3-1 with torch's BatchNorm1d between the layers: smooth, so central differences are
    accurate (two input features, or batch norm would cancel the first layer altogether)."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(2, 3)
        self.norm = nn.BatchNorm1d(3)
        self.out = nn.Linear(3, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.norm(self.hidden(torch.cat([x, x**2], dim=-1)))))


def reference_meta_loss(values: dict[str, torch.Tensor], batch, steps: int, weights: list[float]) -> torch.Tensor:
    """The MAML++ objective written out from the paper: inner SGD with per-tensor, per-step rates
    ``inner_lrs.*[k]``, batch norm with set ``k`` for parameters after ``k`` steps, and the query
    losses after each step weighted by ``weights``; mean over tasks."""
    adapted = ("hidden.weight", "hidden.bias", "out.weight", "out.bias")

    def forward(p, k, x):
        h = torch.cat([x, x**2], dim=-1) @ p["hidden.weight"].T + p["hidden.bias"]
        h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)
        h = h * values["norm.weight"][k] + values["norm.bias"][k]
        return torch.tanh(h) @ p["out.weight"].T + p["out.bias"]

    total = 0.0
    for t in range(batch.num_tasks):
        p = {name: values[name].clone().requires_grad_(True) for name in adapted}
        for k in range(steps):
            loss = F.mse_loss(forward(p, k, batch.support_x[t]), batch.support_y[t])
            grads = torch.autograd.grad(loss, list(p.values()))
            lrs = [values["inner_lrs." + name.replace(".", "-")][k] for name in p]
            p = {n: (w - lr * g).detach().requires_grad_(True) for (n, w), lr, g in zip(p.items(), lrs, grads)}
            total = total + weights[k] * F.mse_loss(forward(p, k + 1, batch.query_x[t]), batch.query_y[t]).detach()
    return total / batch.num_tasks


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_meta_gradient_of_rates_bn_sets_and_msl_matches_finite_differences(strategy):
    torch.manual_seed(3)
    dist = SinusoidTasks(shots=4, query=5, dtype=torch.float64)
    batch = dist.sample(3, torch.Generator().manual_seed(5))
    algo = MAMLPlusPlus(TinyBN().double(), dist.loss, steps=2, lr=0.1, msl_steps=10, task_batching=strategy)
    with torch.no_grad():
        for name, p in algo.named_parameters():
            if name.startswith("inner_lrs."):
                p.copy_(torch.tensor([0.3, 0.1]) * (1 + torch.rand(1)))  # per-step rates differ
            elif name.startswith("model.norm."):
                p.add_(0.3 * torch.randn_like(p))  # so do the per-step BN sets
    weights = algo.loss_weights(4)
    assert weights == pytest.approx([0.3, 0.7])  # MSL on, part-way through its annealing
    assert algo.second_order(4)
    algo.meta_backward(batch, step=4)
    analytic = all_grads(algo)

    values = {name.removeprefix("model."): p.detach().clone() for name, p in algo.named_parameters()}
    assert values["norm.weight"].shape == (3, 3)  # N + 1 = 3 sets of 3 channels
    eps = 1e-6
    numerics = {}
    for name, value in values.items():
        numeric = torch.empty_like(value)
        for i in range(value.numel()):
            plus, minus = dict(values), dict(values)
            plus[name], minus[name] = value.clone(), value.clone()
            plus[name].view(-1)[i] += eps
            minus[name].view(-1)[i] -= eps
            difference = reference_meta_loss(plus, batch, 2, weights) - reference_meta_loss(minus, batch, 2, weights)
            numeric.view(-1)[i] = difference / (2 * eps)
        numerics[name if name.startswith("inner_lrs.") else "model." + name] = numeric
    assert set(numerics) == set(analytic)
    numeric = torch.cat([g.flatten() for g in numerics.values()])
    assert rel(torch.cat([analytic[name].flatten() for name in numerics]), numeric) <= 1e-8
    # Each part to within the differences' rounding error (about 1e-10 here).
    for name, g in numerics.items():
        torch.testing.assert_close(analytic[name], g, rtol=1e-6, atol=1e-9)
        if "hidden.bias" not in name and "hidden-bias" not in name:  # batch norm cancels it and its rates
            assert g.norm() > 1e-6, name  # every rate, BN set and weight has a meta-gradient

    # The meta-step before DA's switch drops the second-order terms, and so misses the differences.
    algo.first_order_steps = 5
    algo.zero_grad()
    algo.meta_backward(batch, step=4)
    first = torch.cat([p.grad.flatten() for name, p in algo.named_parameters() if name in numerics])
    assert rel(first, torch.cat([g.flatten() for name, g in numerics.items()])) > 1e-3


# -- DA: first order, then second order ----------------------------------------------------------


def test_derivative_order_annealing_switches_at_the_given_meta_step():
    torch.manual_seed(0)
    model = MLP(1, 1, [16, 16]).double()
    dist = SinusoidTasks(shots=5, query=5, dtype=torch.float64)
    batch = dist.sample(4, torch.Generator().manual_seed(1))
    flags = {"msl": False, "lslr": False, "bnwb": False, "bnrs": False}
    annealed = MAMLPlusPlus(model, dist.loss, steps=2, lr=0.05, first_order_steps=3, **flags)

    def grad(algo, meta_step=0):
        model.zero_grad()
        algo.meta_backward(batch, step=meta_step)
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    first = grad(MAML(model, dist.loss, steps=2, lr=0.05, first_order=True))
    second = grad(MAML(model, dist.loss, steps=2, lr=0.05, first_order=False))
    assert rel(first, second) > 1e-3
    assert [annealed.second_order(s) for s in (0, 2, 3, 10)] == [False, False, True, True]
    assert rel(grad(annealed, 0), first) <= 1e-13
    assert rel(grad(annealed, 2), first) <= 1e-13  # the last first-order meta-step
    assert rel(grad(annealed, 3), second) <= 1e-13  # the first second-order one
    always_first = MAMLPlusPlus(model, dist.loss, steps=2, lr=0.05, first_order=True, **flags)
    assert rel(grad(always_first, 100), first) <= 1e-13


# -- LSLR beyond the trained steps ---------------------------------------------------------------


def test_evaluation_beyond_the_trained_steps_reuses_the_last_rates():
    torch.manual_seed(0)
    dist = SinusoidTasks(shots=5, query=6, dtype=torch.float64)
    batch = dist.fixed_tasks("val", 3)
    algo = MAMLPlusPlus(MLP(1, 1, [8]).double(), dist.loss, steps=2, lr=0.01, eval_steps=4)
    with torch.no_grad():
        for i, rates in enumerate(algo.inner_lrs.values()):
            rates.copy_(torch.tensor([0.02, 0.05]) * (i + 1))
    assert set(algo.inner_lrs) == {"net-0-weight", "net-0-bias", "net-2-weight", "net-2-bias"}

    adapted = algo.adapt(batch.support_x, batch.support_y, steps=4)
    params = dict(algo.model.named_parameters())
    scores = algo.evaluate(batch, dist.metric, steps=4)
    for t in range(3):
        p = {n: w.detach().clone().requires_grad_(True) for n, w in params.items()}
        for k in range(4):
            with torch.no_grad():
                query = torch.func.functional_call(algo.model, p, (batch.query_x[t],))
                torch.testing.assert_close(scores[k, t], dist.metric(query, batch.query_y[t]))
            loss = dist.loss(torch.func.functional_call(algo.model, p, (batch.support_x[t],)), batch.support_y[t])
            grads = torch.autograd.grad(loss, list(p.values()))
            rates = [algo.inner_lrs[n.replace(".", "-")][min(k, 1)] for n in p]  # steps 2 and 3 use rate 1
            p = {n: (w - r * g).detach().requires_grad_(True) for (n, w), r, g in zip(p.items(), rates, grads)}
        for name in p:
            torch.testing.assert_close(adapted[name][t], p[name], rtol=1e-12, atol=1e-14)


# -- per-step batch norm -----------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_per_step_bn_sets_get_their_own_gradients(strategy):
    batch = image_batch()
    algo = mamlpp_conv(strategy, msl=False, first_order_steps=0)
    assert len(algo.norms) == 4 and all(isinstance(m, PerStepBatchNorm) for m in algo.norms)
    assert "model.features.0.1.weight" not in algo.initial_params()  # meta-learned, not adapted
    algo.meta_backward(batch, step=0)
    grad = algo.norms[1].weight.grad  # [N + 1 = 4 sets, C]
    assert grad.shape == (4, 6) and (grad.abs().sum(dim=1) > 0).all()
    for i in range(4):
        for j in range(i):
            assert rel(grad[i], grad[j]) > 1e-3

    # First order without MSL: the support passes' sets reach the loss only through the inner
    # gradients, which first order drops, so only the last set (the final query pass) learns.
    algo = mamlpp_conv(strategy, msl=False, first_order=True)
    algo.meta_backward(batch, step=0)
    grad = algo.norms[1].weight.grad
    assert grad[:3].abs().max() == 0 and grad[3].abs().sum() > 0


def first_bn_model() -> nn.Module:
    """Batch norm first, so the statistics each pass sees are those of the raw images."""
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 14 * 14, 3)).double()
    model[0].running_mean.fill_(0.5)
    model[0].running_var.fill_(2.0)
    return model


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("msl_on", [True, False])
def test_running_statistics_are_the_momentum_average_of_each_steps_batches(strategy, msl_on):
    torch.manual_seed(0)
    batch = image_batch(tasks=3)
    algo = MAMLPlusPlus(first_bn_model(), F.cross_entropy, steps=3, lr=0.1, msl_steps=10, task_batching=strategy)
    algo.meta_backward(batch, step=0 if msl_on else 10)

    def stats(x):  # per task: mean and unbiased variance over examples and pixels
        flat = x.flatten(1)
        return flat.mean(1), flat.var(1)

    support, query = stats(batch.support_x), stats(batch.query_x)
    # Set 0: the support pass at the initialisation; sets 1-2: the support passes of steps 1-2
    # (and, with MSL, the query passes after steps 1-2); set 3: the final query pass.
    middle = [torch.cat([s, q]).mean() for s, q in zip(support, query)] if msl_on else [s.mean() for s in support]
    expected_mean = torch.stack([support[0].mean(), middle[0], middle[0], query[0].mean()])
    expected_var = torch.stack([support[1].mean(), middle[1], middle[1], query[1].mean()])
    layer = algo.norms[0]
    torch.testing.assert_close(layer.running_mean[:, 0], 0.9 * 0.5 + 0.1 * expected_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(layer.running_var[:, 0], 0.9 * 2.0 + 0.1 * expected_var, rtol=1e-12, atol=1e-14)


def test_evaluation_can_normalise_with_each_steps_running_statistics():
    torch.manual_seed(0)
    model = first_bn_model()
    reference = copy.deepcopy(model).eval()  # torch's own batch norm in evaluation mode
    algo = MAMLPlusPlus(model, F.cross_entropy, steps=2, lr=0.1, bn_eval_stats="running")
    layer = algo.norms[0]
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([[0.1], [0.2], [-0.3]]))
        layer.running_var.copy_(torch.tensor([[0.5], [1.5], [3.0]]))
        layer.weight.copy_(torch.tensor([[1.0], [2.0], [0.5]]))
        layer.bias.copy_(torch.tensor([[0.0], [0.3], [-0.2]]))
        for rates in algo.inner_lrs.values():
            rates.zero_()  # adaptation leaves the weights alone, so only the BN set changes
    batch = image_batch(tasks=2)
    for steps in range(4):  # 3 steps is beyond training: set 2 again
        params = algo.adapt(batch.support_x, batch.support_y, steps=steps)
        with torch.no_grad():
            out = algo.batched_forward(params, batch.query_x)
            one = algo.batched_forward(params, batch.query_x[:, :1])  # no batch dependence
            k = min(steps, 2)
            bn = reference[0]
            bn.running_mean.copy_(layer.running_mean[k])
            bn.running_var.copy_(layer.running_var[k])
            bn.weight.copy_(layer.weight[k])
            bn.bias.copy_(layer.bias[k])
            expected = torch.stack([reference(x) for x in batch.query_x])
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(one, expected[:, :1], rtol=1e-12, atol=1e-12)
    # Batch statistics (the default) do depend on the batch.
    algo.bn_state.running = False
    params = algo.adapt(batch.support_x, batch.support_y, steps=0)
    with torch.no_grad():
        whole = algo.batched_forward(params, batch.query_x)[:, :1]
        alone = algo.batched_forward(params, batch.query_x[:, :2])[:, :1]
    assert (whole - alone).abs().max() > 1e-6


def test_state_dict_holds_the_rates_and_per_step_norms_and_loads_back():
    algo = mamlpp_conv("vmap")
    algo.meta_backward(image_batch(), step=0)
    state = algo.state_dict()
    assert state["inner_lrs.head-weight"].shape == (3,)
    assert state["model.features.2.1.running_var"].shape == (4, 6)
    assert state["model.features.2.1.weight"].shape == (4, 6)
    fresh = MAMLPlusPlus(Conv4(1, 3, hidden=6, image_size=16).double(), F.cross_entropy, steps=3)
    fresh.load_state_dict(state)
    batch = image_batch(seed=1)
    metric = lambda out, y: F.cross_entropy(out, y)  # noqa: E731
    torch.testing.assert_close(fresh.evaluate(batch, metric, steps=4), algo.evaluate(batch, metric, steps=4))


def test_swaps_torch_batch_norm_keeping_its_values_and_flags_work_without_any():
    model = first_bn_model()
    model[0].weight.data.fill_(1.5)
    algo = MAMLPlusPlus(model, F.cross_entropy, steps=2, bnwb=False)
    layer = model[0]
    assert isinstance(layer, PerStepBatchNorm) and layer.weight.shape == (1,) and layer.weight.item() == 1.5
    assert torch.equal(layer.running_mean, torch.full((3, 1), 0.5))
    assert "0.weight" in algo.initial_params()  # shared BN weights are adapted, as in MAML
    mlp = MAMLPlusPlus(MLP(), nn.functional.mse_loss)  # no batch norm: nothing to swap
    assert mlp.norms == [] and len(mlp.inner_lrs) == 6


# -- configs: CA, validation, presets ---------------------------------------------------------


def test_inner_loop_mamlpp_turns_on_cosine_annealing_and_the_command_line_wins():
    cfg = compose_train("inner_loop=mamlpp")
    assert cfg.inner_loop._target_ == "maml_cli.algorithms.mamlpp.MAMLPlusPlus"
    assert cfg.optimizer.schedule == "cosine" and cfg.optimizer.min_lr == 1e-5
    assert compose_train("inner_loop=mamlpp", "optimizer.schedule=constant").optimizer.schedule == "constant"
    assert compose_train("inner_loop=mamlpp", "optimizer=sgd").optimizer.schedule == "cosine"
    assert compose_train("inner_loop=maml").optimizer.schedule == "constant"  # others untouched
    assert compose_train("experiment=mamlpp_omniglot_20w1s", "optimizer.schedule=constant").optimizer.schedule == (
        "constant"
    )


@pytest.mark.parametrize(
    "name,expected",
    [
        ("mamlpp_omniglot_20w1s", {"ways": 20, "query": 1, "hidden": 64, "lr": 0.1, "batch": 8, "msl": 5000}),
        ("mamlpp_omniglot_5w1s", {"ways": 5, "query": 1, "hidden": 64, "lr": 0.1, "batch": 8, "msl": 5000}),
        ("mamlpp_miniimagenet_5w1s", {"ways": 5, "query": 15, "hidden": 48, "lr": 0.01, "batch": 2, "msl": 7500}),
    ],
)
def test_presets_carry_the_released_settings(name, expected):
    cfg = compose_train(f"experiment={name}")
    got = {
        "ways": cfg.dataset.ways,
        "query": cfg.dataset.query,
        "hidden": cfg.model.hidden,
        "lr": cfg.inner_loop.lr,
        "batch": cfg.trainer.meta_batch_size,
        "msl": cfg.inner_loop.msl_steps,
    }
    assert got == expected
    assert cfg.inner_loop.steps == cfg.inner_loop.eval_steps == 5 and cfg.trainer.max_steps == 50_000
    assert cfg.optimizer.schedule == "cosine" and cfg.inner_loop.first_order_steps == 0


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("inner_loop.bn_eval_stats=mean", "bn_eval_stats must be one of"),
        ("inner_loop.msl_steps=-1", "msl_steps must be an integer >= 0"),
        ("inner_loop.bn_momentum=2", "bn_momentum must be in [0, 1]"),
    ],
)
def test_bad_values_are_one_line_config_errors(override, fragment):
    cfg = compose_train("inner_loop=mamlpp", override)
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        build_run(cfg, torch.device("cpu"))
    cfg = compose_train("inner_loop=mamlpp", "inner_loop.bn_eval_stats=running", "inner_loop.bnrs=false")
    with pytest.raises(ConfigError, match="set inner_loop.bnrs=true"):
        build_run(cfg, torch.device("cpu"))


# -- end to end through the CLI --------------------------------------------------------------------


def test_train_and_evaluate_conv4_with_mamlpp_through_the_cli(tmp_path):
    from .fixtures_images import image_folder

    image_folder(tmp_path / "images")
    proc = run_cli(
        "maml-train",
        "dataset=image_folder",
        f"dataset.path={tmp_path / 'images'}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        "dataset.split_ratios=[0.5,0.25,0.25]",
        "dataset.ways=2",
        "dataset.query=2",
        "dataset.image_size=16",
        "model=conv4",
        "model.hidden=4",
        "inner_loop=mamlpp",
        "inner_loop.steps=2",
        "inner_loop.eval_steps=3",  # one more than training: the last rates and BN set again
        "inner_loop.msl_steps=2",
        "inner_loop.first_order_steps=1",
        "trainer.max_steps=3",
        "trainer.meta_batch_size=2",
        "trainer.val_every=3",
        "trainer.val_tasks=4",
        "trainer.progress=false",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["steps"] == 3 and 0.0 <= metrics["last"]["value"] <= 1.0
    state = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert state["config"]["optimizer"]["schedule"] == "cosine"
    model = state["model"]
    rates = model["inner_lrs.head-weight"]
    assert rates.shape == (2,) and not torch.equal(rates, torch.full((2,), 0.01))  # learned
    running = model["model.features.0.1.running_mean"]
    assert running.shape == (3, 4) and running.abs().sum() > 0  # collected per step

    for extra, folder in (((), "ev"), (("inner_loop.bn_eval_stats=running",), "ev_running")):
        proc = run_cli(
            "maml-eval",
            f"checkpoint={tmp_path / 'run/checkpoints/last.pt'}",
            "eval.episodes=6",
            *extra,
            f"hydra.run.dir={folder}",
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        result = json.loads((tmp_path / folder / "eval.json").read_text())
        assert result["steps"] == 3 and len(result["per_step"]) == 4 and 0.0 <= result["mean"] <= 1.0
