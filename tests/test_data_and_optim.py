"""Sinusoid tasks follow the paper's distribution; held-out sets are fixed; schedules decay as said."""

from __future__ import annotations

import math

import pytest
import torch

from maml_cli.data import SinusoidTasks
from maml_cli.engine.optim import build_optimizer, build_scheduler
from maml_cli.errors import ConfigError

from .helpers import compose_train


def test_sinusoid_tasks_follow_the_paper_distribution():
    tasks = SinusoidTasks(shots=7, query=3)
    gen = torch.Generator().manual_seed(0)
    amplitude, phase, frequency = tasks.sample_task_parameters(20_000, gen)
    assert 0.1 <= amplitude.min() and amplitude.max() <= 5.0
    assert 0.0 <= phase.min() and phase.max() <= math.pi
    assert abs(amplitude.mean().item() - 2.55) < 0.05 and abs(phase.mean().item() - math.pi / 2) < 0.05
    assert torch.all(frequency == 1.0)
    batch = tasks.episodes_for(amplitude[:4], phase[:4], frequency[:4], gen)
    assert batch.support_x.shape == (4, 7, 1) and batch.query_y.shape == (4, 3, 1)
    assert batch.support_x.abs().max() <= 5.0
    torch.testing.assert_close(batch.support_y, amplitude[:4] * torch.sin(batch.support_x - phase[:4]))


def test_sinusoid_frequency_range_of_the_meta_sgd_paper():
    fixed = SinusoidTasks().sample(6, torch.Generator().manual_seed(1))
    tasks = SinusoidTasks(frequency=(0.8, 1.2))
    gen = torch.Generator().manual_seed(0)
    amplitude, phase, frequency = tasks.sample_task_parameters(20_000, gen)
    assert 0.8 <= frequency.min() and frequency.max() <= 1.2 and abs(frequency.mean().item() - 1.0) < 0.01
    batch = tasks.episodes_for(amplitude[:4], phase[:4], frequency[:4], gen)
    expected = amplitude[:4] * torch.sin(frequency[:4] * batch.query_x - phase[:4])
    torch.testing.assert_close(batch.query_y, expected)
    # A fixed frequency draws nothing: the default task stream is what it was before frequencies.
    gen = torch.Generator().manual_seed(1)
    a = torch.rand((6, 1, 1), generator=gen) * 4.9 + 0.1
    p = torch.rand((6, 1, 1), generator=gen) * math.pi
    x = torch.rand((6, 20, 1), generator=gen) * 10.0 - 5.0
    torch.testing.assert_close(fixed.support_x, x[:, :10])
    torch.testing.assert_close(fixed.query_y, a * torch.sin(x[:, 10:] - p))


def test_held_out_tasks_are_fixed_and_apart_from_training():
    tasks = SinusoidTasks(seed=3)
    val_a, val_b = tasks.fixed_tasks("val", 50), tasks.fixed_tasks("val", 50)
    assert torch.equal(val_a.support_x, val_b.support_x) and torch.equal(val_a.query_y, val_b.query_y)
    test = tasks.fixed_tasks("test", 50)
    train = tasks.sample(50, torch.Generator().manual_seed(3))
    assert not torch.equal(val_a.support_x, test.support_x)
    assert not torch.equal(val_a.support_x, train.support_x)
    assert not torch.equal(SinusoidTasks(seed=4).fixed_tasks("val", 50).support_x, val_a.support_x)
    with pytest.raises(ConfigError, match="unknown split 'train'"):
        tasks.fixed_tasks("train", 5)


def test_same_seed_same_training_stream():
    tasks = SinusoidTasks()
    a = tasks.sample(5, torch.Generator().manual_seed(11))
    b = tasks.sample(5, torch.Generator().manual_seed(11))
    assert torch.equal(a.query_x, b.query_x)


def scheduled_lrs(cfg, optimizer, max_steps: int, steps: int) -> list[float]:
    """The learning rate of each of the first ``steps`` meta-steps under ``cfg.optimizer``'s schedule."""
    scheduler = build_scheduler(cfg.optimizer, optimizer, max_steps=max_steps)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_cosine_schedule_with_warmup_reaches_min_lr():
    cfg = compose_train(
        "optimizer=sgd",
        "optimizer.schedule=cosine",
        "optimizer.lr=0.1",
        "optimizer.min_lr=0.01",
        "optimizer.warmup_steps=10",
    )
    optimizer = build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    lrs = scheduled_lrs(cfg, optimizer, max_steps=110, steps=111)
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)  # linear warm-up
    assert lrs[60] == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[110] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_linear_schedule_anneals_like_reptiles_outer_step():
    # Reptile's code: step size at iteration i of N is (1 - i/N) * eps + (i/N) * eps_final.
    cfg = compose_train("optimizer=sgd", "optimizer.schedule=linear", "optimizer.lr=0.1", "optimizer.min_lr=0.02")
    optimizer = build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    lrs = scheduled_lrs(cfg, optimizer, max_steps=50, steps=60)
    assert lrs[:50] == pytest.approx([(1 - i / 50) * 0.1 + (i / 50) * 0.02 for i in range(50)])
    assert lrs[50:] == pytest.approx([0.02] * 10)  # held at min_lr past max_steps
    for preset in ("reptile_sinusoid", "reptile_omniglot_5w1s"):
        cfg = compose_train(f"experiment={preset}")
        assert cfg.optimizer.schedule == "linear" and cfg.optimizer.min_lr == 0.0


def test_adam_and_adamw_take_their_settings():
    cfg = compose_train("optimizer=adamw", "optimizer.betas=[0.8,0.9]")
    optimizer = build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.8, 0.9) and optimizer.defaults["weight_decay"] == 0.01


def test_held_out_tasks_do_not_depend_on_the_batch_size():
    tasks = SinusoidTasks()
    whole = next(tasks.held_out("test", 30, 30))
    parts = list(tasks.held_out("test", 30, 7))
    assert [p.num_tasks for p in parts] == [7, 7, 7, 7, 2]
    assert torch.equal(torch.cat([p.support_x for p in parts]), whole.support_x)
