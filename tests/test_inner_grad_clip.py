"""inner_loop.grad_clip: an optional bound on each task's inner gradient, off by default."""

from __future__ import annotations

import json

import pytest
import torch

from maml_cli.algorithms import MAML
from maml_cli.algorithms.maml import clip_task_gradients
from maml_cli.data import SinusoidTasks
from maml_cli.models import MLP

from .helpers import TINY, run_cli
from .test_cli import QUIET, assert_one_line_error


def test_each_task_is_scaled_to_the_bound_on_its_own():
    grads = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]]), "b": torch.tensor([[0.0], [0.0]])}
    clipped = clip_task_gradients(grads, 1.0, batched=True)
    torch.testing.assert_close(clipped["w"], torch.tensor([[0.6, 0.8], [0.3, 0.4]]))  # norm 5 -> 1; 0.5 kept
    one = clip_task_gradients({"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([12.0])}, 2.0, batched=False)
    norm = torch.cat([one["w"], one["b"]]).norm()
    assert norm.item() == pytest.approx(2.0) and one["b"].item() == pytest.approx(12.0 * 2.0 / 13.0)
    assert clip_task_gradients(grads, None, batched=True) is grads


def meta_grad(strategy: str, clip: float | None):
    torch.manual_seed(0)
    model = MLP(1, 1, [20, 20]).double()
    tasks = SinusoidTasks(shots=5, query=10, dtype=torch.float64)
    algo = MAML(model, tasks.loss, steps=2, lr=0.05, task_batching=strategy, grad_clip=clip)
    algo.meta_backward(tasks.sample(6, torch.Generator().manual_seed(1)))
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_clipped_meta_gradient_is_the_same_under_vmap_and_loop_and_differs_from_unclipped():
    vmap, loop = meta_grad("vmap", 0.5), meta_grad("loop", 0.5)
    assert ((vmap - loop).norm() / loop.norm()).item() <= 1e-12
    unclipped = meta_grad("vmap", None)
    assert ((vmap - unclipped).norm() / unclipped.norm()).item() > 1e-3  # the bound is active here


def test_the_clip_keeps_exploding_tasks_finite_at_evaluation():
    torch.manual_seed(0)
    model = MLP(1, 1, [40, 40])
    tasks = SinusoidTasks(shots=5, query=20)
    batch = next(tasks.held_out("test", 50, 50))
    plain = MAML(model, tasks.loss, lr=1.5, eval_steps=20).evaluate(batch, tasks.metric)
    clipped = MAML(model, tasks.loss, lr=1.5, eval_steps=20, grad_clip=1.0).evaluate(batch, tasks.metric)
    blown = ~torch.isfinite(plain[-1]) | (plain[-1] > 100 * plain[0])
    assert blown.sum() > 10  # a rate this large blows up plain SGD on many tasks
    still = (clipped[-1] > 100 * clipped[0]).sum()  # tasks that start near 0 can still end 100x up
    assert torch.isfinite(clipped).all() and still <= blown.sum() // 4, (still, blown.sum())


def test_a_non_positive_bound_is_one_line(tmp_path):
    proc = run_cli("maml-train", *TINY, *QUIET, "inner_loop.grad_clip=0", "hydra.run.dir=run", cwd=tmp_path)
    assert_one_line_error(proc, "inner_loop.grad_clip must be a number > 0")


def test_checkpoints_from_before_the_key_can_set_it_at_evaluation(tmp_path):
    from maml_cli.engine.checkpoint import load_checkpoint, save_checkpoint

    proc = run_cli("maml-train", *TINY, *QUIET, "trainer.max_steps=1", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    state = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    del state["config"]["inner_loop"]["grad_clip"], state["config"]["trainer"]["num_threads"]  # as saved before
    save_checkpoint(state, tmp_path / "old.pt")
    args = ("eval.episodes=10", "eval.steps=2", "eval.output=e.json", "hydra.run.dir=ev")
    proc = run_cli(
        "maml-eval", "checkpoint=old.pt", "inner_loop.grad_clip=0.001", "eval.num_threads=1", *args, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    clipped = json.loads((tmp_path / "e.json").read_text())
    proc = run_cli("maml-eval", "checkpoint=old.pt", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    plain = json.loads((tmp_path / "e.json").read_text())
    assert clipped["per_step"][0]["mean"] == plain["per_step"][0]["mean"]  # same tasks, same start
    assert clipped["per_step"][2]["mean"] != plain["per_step"][2]["mean"]  # the bound was applied
