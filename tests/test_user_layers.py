"""Models as users write them: standard BatchNorm with running statistics, Dropout, LayerNorm,
GroupNorm; and which parameters adapt (``inner_loop.adapt``) or are frozen (``model.freeze``)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from maml_cli.algorithms import ANIL, MAML
from maml_cli.engine.checkpoint import load_checkpoint
from maml_cli.errors import ConfigError
from maml_cli.models.selection import freeze_parameters

from .helpers import image_batch, run_cli
from .outside_model import UserNet

NORMS = ["batch2d", "batch1d", "batch3d", "group", "layer"]
LR, STEPS = 0.3, 2


def cross_entropy(out, y):
    return F.cross_entropy(out, y)


def user_net(norm="batch2d", dropout=0.0, seed=0) -> UserNet:
    torch.manual_seed(seed)
    model = UserNet(norm=norm, dropout=dropout).double()
    with torch.no_grad():  # running statistics that are not the defaults, so reading them shows
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


def reference_without_buffers(model: nn.Module) -> nn.Module:
    """The same weights with ``track_running_stats=False``: PyTorch's own batch-statistics BN."""
    ref = copy.deepcopy(model)
    for module in ref.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = module.running_var = module.num_batches_tracked = None
    return ref


def reference_objective(model: nn.Module, params: dict, batch, create_graph=True) -> torch.Tensor:
    """Per-task loop, written out: SGD on the support set, mean query loss of the adapted weights."""
    total = 0.0
    for t in range(batch.num_tasks):
        fast = dict(params)
        for _ in range(STEPS):
            loss = cross_entropy(functional_call(model, fast, (batch.support_x[t],)), batch.support_y[t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)
            fast = {k: w - LR * g for (k, w), g in zip(fast.items(), grads)}
        total = total + cross_entropy(functional_call(model, fast, (batch.query_x[t],)), batch.query_y[t])
    return total / batch.num_tasks


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("norm", NORMS)
def test_meta_gradient_equals_the_per_task_reference_and_buffers_stay(norm):
    batch = image_batch(tasks=3, ways=3, shots=2, query=3, size=8)
    model = user_net(norm)
    ref = reference_without_buffers(model)
    reference_objective(ref, dict(ref.named_parameters()), batch).backward()
    expected = flat_grad(ref)
    assert expected.norm() > 0
    for strategy in ("vmap", "loop"):
        model.zero_grad()
        before = buffers(model)
        algo = MAML(model, cross_entropy, steps=STEPS, lr=LR, task_batching=strategy)
        algo.meta_backward(batch)
        got = flat_grad(model)
        assert ((got - expected).norm() / expected.norm()).item() <= 1e-10, strategy
        algo.evaluate(batch, cross_entropy, steps=2)
        algo.adapt(batch.support_x, batch.support_y, steps=2)
        after = buffers(model)
        assert before.keys() == after.keys()
        for key in before:  # never written: not by the inner loop, not by the query pass
            assert torch.equal(before[key], after[key]), (strategy, key)


def test_meta_gradient_of_a_standard_batch_norm_model_matches_finite_differences():
    batch = image_batch(tasks=2, ways=3, shots=2, query=3, size=8)
    model = user_net("batch2d")
    algo = MAML(model, cross_entropy, steps=STEPS, lr=LR, task_batching="vmap")
    algo.meta_backward(batch)
    grad = {k: p.grad.clone() for k, p in model.named_parameters()}
    ref = reference_without_buffers(model)
    names = [k for k, _ in ref.named_parameters()]
    g = torch.Generator().manual_seed(3)
    direction = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in ref.named_parameters()}
    eps = 1e-6

    def objective(sign: float) -> float:
        params = {k: (p + sign * eps * direction[k]).detach().requires_grad_(True) for k, p in ref.named_parameters()}
        return reference_objective(ref, params, batch, create_graph=False).item()

    numeric = (objective(1.0) - objective(-1.0)) / (2 * eps)
    analytic = sum((grad[k] * direction[k]).sum().item() for k in names)
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic))


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_running_statistics_are_read_at_evaluation_and_written_by_the_outer_loop_only(strategy):
    batch = image_batch(tasks=3, ways=3, shots=2, query=3, size=8)
    model = user_net("batch2d")
    expected_model = copy.deepcopy(model).train()  # PyTorch's own momentum update, by hand
    algo = MAML(model, cross_entropy, steps=STEPS, lr=LR, task_batching=strategy, batch_norm="running")
    batch_mode = MAML(copy.deepcopy(model), cross_entropy, steps=STEPS, lr=LR, task_batching=strategy)

    start = buffers(model)
    running_scores = algo.evaluate(batch, cross_entropy, steps=2)
    algo.adapt(batch.support_x, batch.support_y, steps=2)
    assert all(torch.equal(start[k], v) for k, v in buffers(model).items())  # adaptation writes nothing
    # Evaluation normalised with the running statistics, not the batch's.
    assert not torch.allclose(running_scores, batch_mode.evaluate(batch, cross_entropy, steps=2))

    algo.meta_backward(batch)
    with torch.no_grad():
        for t in range(batch.num_tasks):
            expected_model(torch.cat([batch.support_x[t], batch.query_x[t]]))
    for key, value in buffers(expected_model).items():
        torch.testing.assert_close(buffers(model)[key], value, rtol=1e-12, atol=1e-12)
    assert int(model.features[1].num_batches_tracked) == batch.num_tasks


def test_vmap_and_loop_agree_at_evaluation_with_running_statistics():
    batch = image_batch(tasks=3, ways=3, shots=2, query=3, size=8)
    scores = [
        MAML(user_net("batch2d"), cross_entropy, lr=LR, task_batching=s, batch_norm="running").evaluate(
            batch, cross_entropy, steps=3
        )
        for s in ("vmap", "loop")
    ]
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-10, atol=1e-12)


def test_dropout_draws_a_mask_per_task_under_vmap_and_is_off_at_evaluation():
    model = user_net("group", dropout=0.5)
    algo = MAML(model, cross_entropy, lr=LR, task_batching="vmap")
    x = torch.randn(1, 6, 1, 8, 8, dtype=torch.float64).expand(4, -1, -1, -1, -1)
    params = {k: v.unsqueeze(0).expand(4, *v.shape) for k, v in algo.initial_params().items()}
    algo.train()
    out = algo.batched_forward(params, x)
    assert all(not torch.equal(out[0], out[t]) for t in range(1, 4))  # same inputs, other masks
    algo.eval()
    out = algo.batched_forward(params, x)
    assert all(torch.equal(out[0], out[t]) for t in range(1, 4))
    batch = image_batch(tasks=3, ways=3, shots=2, query=3, size=8)
    algo.meta_backward(batch)  # training mode, masks per task: runs and leaves a finite meta-gradient
    assert algo.model.training and torch.isfinite(flat_grad(model)).all()
    first = algo.evaluate(batch, cross_entropy, steps=1)
    assert not algo.model.training and torch.equal(first, algo.evaluate(batch, cross_entropy, steps=1))


def test_bad_batch_norm_choices_are_one_clear_line():
    with pytest.raises(ValueError, match=r"model.batch_norm must be one of \('batch', 'running'\)"):
        MAML(user_net(), cross_entropy, batch_norm="frozen")
    with pytest.raises(ValueError, match="has none"):
        MAML(user_net("group"), cross_entropy, batch_norm="running")


# -- which parameters adapt and which learn -------------------------------------------------------


def test_adapt_patterns_choose_the_inner_loops_parameters():
    model = user_net("batch2d")
    names = [k for k, _ in model.named_parameters()]
    assert list(MAML(model, cross_entropy).initial_params()) == names
    assert list(MAML(model, cross_entropy, adapt=["classifier.*"]).initial_params()) == [
        "classifier.weight",
        "classifier.bias",
    ]
    assert list(MAML(model, cross_entropy, adapt="classifier").initial_params()) == [
        "classifier.weight",
        "classifier.bias",
    ]
    assert list(MAML(model, cross_entropy, adapt=[r"re:features\.\d\.bias", "*.weight"]).initial_params()) == [
        "features.0.weight",
        "features.0.bias",
        "features.1.weight",
        "features.1.bias",
        "classifier.weight",
    ]
    with pytest.raises(ConfigError, match=r"inner_loop.adapt: pattern 'head\.\*' matches no parameter; the parameters"):
        MAML(model, cross_entropy, adapt=["head.*"])


def test_adapting_the_head_only_is_anil_and_the_body_still_learns():
    batch = image_batch(tasks=2, ways=3, shots=2, query=3, size=8)
    grads = []
    for make in (
        lambda m: MAML(m, cross_entropy, steps=STEPS, lr=LR, adapt=["classifier.*"]),
        lambda m: ANIL(m, cross_entropy, steps=STEPS, lr=LR),
    ):
        model = user_net("batch2d")
        make(model).meta_backward(batch)
        grads.append(flat_grad(model))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    assert grads[0].abs().sum() > 0


def test_frozen_parameters_neither_adapt_nor_learn():
    batch = image_batch(tasks=2, ways=3, shots=2, query=3, size=8)
    model = user_net("batch2d")
    frozen = freeze_parameters(model, ["features.*"])
    assert frozen == ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias"]
    algo = MAML(model, cross_entropy, steps=STEPS, lr=LR)
    assert list(algo.initial_params()) == ["classifier.weight", "classifier.bias"]
    algo.meta_backward(batch)
    assert all(model.get_parameter(k).grad is None for k in frozen)
    assert model.classifier.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match=r"model.freeze: pattern 'body' matches no parameter"):
        freeze_parameters(user_net(), ["body"])


# -- through maml-train and maml-eval -----------------------------------------------------------------


def _env():
    root = str(Path(__file__).resolve().parent.parent)
    return {"PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.parametrize(
    "extra",
    [
        ("inner_loop.task_batching=auto", "+model.dropout=0.2"),
        ("inner_loop.task_batching=vmap", "model.batch_norm=running", "model.freeze=[features.0.*]"),
        ("inner_loop.task_batching=loop", "inner_loop.adapt=[classifier.*]"),
    ],
    ids=["auto-dropout", "vmap-running", "loop-adapt-head"],
)
def test_a_users_batch_norm_model_trains_and_evaluates_through_the_cli(tmp_path, extra):
    from .fixtures_images import image_folder

    image_folder(tmp_path / "images")
    common = (
        "dataset=image_folder",
        f"dataset.path={tmp_path / 'images'}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        "dataset.split_ratios=[0.5,0.25,0.25]",
        "dataset.ways=2",
        "dataset.query=2",
        "dataset.image_size=8",
    )
    proc = run_cli(
        "maml-train",
        *common,
        "model=conv4",  # its in_channels, hidden and image_size are UserNet's arguments too
        "model._target_=tests.outside_model.UserNet",
        "~model.out_features",
        "+model.ways=${dataset.ways}",
        "model.hidden=4",
        *extra,
        "trainer.max_steps=3",
        "trainer.meta_batch_size=2",
        "trainer.val_every=3",
        "trainer.val_tasks=4",
        "trainer.progress=false",
        "hydra.run.dir=run",
        cwd=tmp_path,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    state = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    running_var = state["model"]["model.features.1.running_var"]
    if "model.batch_norm=running" in extra:
        assert not torch.equal(running_var, torch.ones_like(running_var))  # the outer loop updated them
    else:
        assert torch.equal(running_var, torch.ones_like(running_var))  # untouched, as the convention says
    proc = run_cli(
        "maml-eval",
        "checkpoint=run/checkpoints/last.pt",
        "eval.episodes=4",
        "eval.steps=2",
        "hydra.run.dir=eval",
        cwd=tmp_path,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "eval/eval.json").read_text())
    assert result["steps"] == 2 and 0.0 <= result["mean"] <= 1.0 and result["diverged_tasks"] == 0


def test_a_model_that_cannot_take_the_datasets_inputs_is_one_line_before_training():
    from maml_cli.engine.build import build_run

    from .helpers import compose_train

    with pytest.raises(ConfigError) as info:
        build_run(compose_train("model.in_features=3"), torch.device("cpu"))
    assert str(info.value).startswith("model._target_=maml_cli.models.MLP cannot take the dataset's inputs (each of")
    assert "shape [1]" in str(info.value) and "model.in_features" in str(info.value)


def test_an_error_raised_by_a_resolver_is_reported_as_itself():
    from omegaconf import OmegaConf

    from maml_cli.cli.common import describe

    def failing(_):
        raise ConfigError("table t.csv not found; set dataset.path to a CSV or Parquet file")

    OmegaConf.register_new_resolver("test_user_layers_fails", failing, replace=True)
    cfg = OmegaConf.create({"model": {"in_features": "${test_user_layers_fails:x}"}})
    with pytest.raises(Exception) as info:
        cfg.model.in_features  # noqa: B018 - resolving is the point
    assert describe(info.value) == "table t.csv not found; set dataset.path to a CSV or Parquet file"


@pytest.mark.parametrize("algorithm", ["maml", "metasgd", "anil-zero-head"])
def test_adapting_one_task_alone_equals_adapting_it_among_others(algorithm):
    from maml_cli.algorithms import MetaSGD

    batch = image_batch(tasks=2, ways=3, shots=2, query=3, size=8)
    model = user_net("batch2d", dropout=0.3)
    algo = {
        "maml": lambda: MAML(model, cross_entropy, lr=LR, grad_clip=5.0),
        "metasgd": lambda: MetaSGD(model, cross_entropy, lr=LR),
        "anil-zero-head": lambda: ANIL(model, cross_entropy, lr=LR, zero_head=True),
    }[algorithm]()
    alone = algo.adapt(batch.support_x[:1], batch.support_y[:1], steps=3)  # one task: no vmap
    among = algo.adapt(batch.support_x, batch.support_y, steps=3)  # under vmap
    assert alone.keys() == among.keys()
    for key in alone:
        torch.testing.assert_close(alone[key][0], among[key][0], rtol=1e-10, atol=1e-12)
