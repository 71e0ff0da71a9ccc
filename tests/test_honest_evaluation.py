"""Evaluation and validation tell the truth when adaptation diverges on some tasks; and the small
things a user meets in the first hour: thread settings, strict JSON, file modes, logs, help."""

from __future__ import annotations

import json
import math
import os
import stat
from types import SimpleNamespace

import pytest
import torch

from maml_cli.cli.evaluate import format_table
from maml_cli.data.images import FewShotImageTasks
from maml_cli.engine.checkpoint import save_checkpoint, write_json
from maml_cli.engine.evaluation import DIVERGENCE_FACTOR, diverged, summarise
from maml_cli.engine.trainer import Trainer

from .helpers import TINY, run_cli
from .test_cli import QUIET


def _strict_json(path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which strict JSON has not")

    return json.loads(path.read_text(), parse_constant=refuse)


# -- the divergence rule and the summary ------------------------------------------------------


def test_one_exploding_task_is_counted_and_left_out_of_the_stable_mean():
    before = torch.tensor([1.0, 2.0, 3.0, 0.5])
    scores = torch.stack(
        [
            before,
            torch.tensor([0.5, 1.0, 1.5, 0.4]),
            torch.tensor([0.4, 0.9, 1.2, 8e6]),  # task 3: 1.6e7 times its loss before: diverged
            torch.tensor([0.3, 0.8, 1.0, math.inf]),
        ]
    )
    rows = summarise(scores, higher_is_better=False)
    assert [r.diverged_tasks for r in rows] == [0, 0, 1, 1]
    assert rows[2].mean == pytest.approx((0.4 + 0.9 + 1.2 + 8e6) / 4)
    assert rows[2].mean_stable == pytest.approx((0.4 + 0.9 + 1.2) / 3)
    assert rows[2].median == pytest.approx(0.9)  # the lower of the two middle values
    assert math.isinf(rows[3].mean) and rows[3].mean_stable == pytest.approx(0.7)
    assert rows[1].mean == rows[1].mean_stable


def test_the_factor_is_relative_to_each_tasks_own_loss_before_adaptation():
    before = torch.tensor([0.01, 10.0])
    after = torch.tensor([0.01 * DIVERGENCE_FACTOR * 1.01, 10.0 * DIVERGENCE_FACTOR * 0.99])
    flags = diverged(torch.stack([before, after]), higher_is_better=False)
    assert flags[1].tolist() == [True, False]


def test_a_nan_task_is_diverged_and_the_worst_for_the_median():
    scores = torch.tensor([[1.0, 1.0, 1.0], [0.2, math.nan, 0.1]])
    row = summarise(scores, higher_is_better=False)[1]
    assert row.diverged_tasks == 1 and math.isnan(row.mean)
    assert row.median == pytest.approx(0.2) and row.mean_stable == pytest.approx(0.15)


def test_accuracy_diverges_only_when_not_finite_and_nan_logits_score_nan():
    tasks = SimpleNamespace()
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    target = torch.tensor([0, 1])
    assert FewShotImageTasks.metric(tasks, logits, target).item() == 1.0
    assert math.isnan(FewShotImageTasks.metric(tasks, logits * math.nan, target).item())
    assert math.isnan(FewShotImageTasks.metric(tasks, logits * math.inf, target).item())
    scores = torch.tensor([[0.2, 0.2], [0.0, math.nan]])  # an accuracy of 0 is bad, not diverged
    assert diverged(scores, higher_is_better=True)[1].tolist() == [False, True]


def test_the_table_stays_aligned_for_any_magnitude():
    scores = torch.tensor([[2.0, 3.0, 1.0], [0.5, 0.6, 1e27], [0.4, 0.3, math.inf], [0.3, 0.2, math.nan]])
    per_step = summarise(scores, higher_is_better=False)
    result = {
        "metric": "mse",
        "checkpoint_step": 5,
        "ensemble": [],
        "episodes": 3,
        "split": "test",
        "shots": 5,
        "steps": 3,
        "divergence_rule": "NaN or inf, or above 100x the task's loss before adaptation",
    }
    lines = format_table(result, per_step)
    table = lines[1:5]  # header, before, after 1 and 3 steps
    assert len({len(line) for line in table}) == 1, "\n".join(table)
    assert "3.333e+26" in lines[3] and lines[3].rstrip().endswith("1")
    assert "adaptation diverged on 1 of 3 tasks" in lines[-1]


# -- validation and best.pt ---------------------------------------------------------------------


@pytest.mark.parametrize("higher_is_better", [False, True])
def test_a_nan_validation_is_never_best_and_any_number_beats_it(higher_is_better):
    trainer = SimpleNamespace(best=None, tasks=SimpleNamespace(higher_is_better=higher_is_better))
    is_better = Trainer._is_better.__get__(trainer)
    assert not is_better(math.nan)
    trainer.best = {"value": math.nan}  # a NaN best from an older checkpoint
    assert is_better(0.5)
    trainer.best = {"value": 0.5}
    assert not is_better(math.nan)
    assert is_better(0.9 if higher_is_better else 0.1) and not is_better(0.1 if higher_is_better else 0.9)


def test_validation_counts_diverged_tasks_and_best_pt_skips_nan(tmp_path):
    # 5-point tasks, inner rate 2.0 and 10 steps at validation: plain SGD blows up on every task.
    proc = run_cli(
        "maml-train",
        *TINY,
        *QUIET,
        "inner_loop.lr=0.01",
        "inner_loop.eval_steps=1",
        "trainer.max_steps=2",
        "trainer.val_every=1",
        "trainer.num_threads=1",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = _strict_json(tmp_path / "run/metrics.json")
    assert metrics["last"]["diverged_tasks"] == 0
    assert {"median", "value_stable", "diverged_tasks"} <= set(metrics["last"])
    # Evaluate that checkpoint with a rate that explodes: diverged tasks per step, strict JSON.
    proc = run_cli(
        "maml-eval",
        f"checkpoint={tmp_path / 'run/checkpoints/last.pt'}",
        "inner_loop.lr=3.0",
        "dataset.shots=5",
        "eval.episodes=40",
        "eval.steps=10",
        "eval.num_threads=1",
        "hydra.run.dir=ev",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = _strict_json(tmp_path / "ev/eval.json")
    counts = [row["diverged_tasks"] for row in result["per_step"]]
    assert counts[0] == 0 and counts[-1] > 0 and result["diverged_tasks"] == counts[-1]
    last = result["per_step"][-1]
    stable = [row for row in result["per_step"] if row["diverged_tasks"] < 40]
    assert all(row["mean_stable"] is not None for row in stable)
    assert last["mean"] is None or last["mean"] > last["median"]  # null: inf or NaN in strict JSON
    printed = proc.stdout.splitlines()
    assert any(line.startswith("note: adaptation diverged on") for line in printed)
    # What was printed is in evaluate.log too.
    log = (tmp_path / "ev/evaluate.log").read_text()
    for line in printed:
        assert line in log


def test_nan_validation_leaves_no_best_pt_and_strict_metrics(tmp_path):
    # One inner step at rate 2 trains (finitely), but 60 such steps at validation overflow to NaN.
    proc = run_cli(
        "maml-train",
        *TINY,
        *QUIET,
        "inner_loop.lr=2.0",
        "inner_loop.eval_steps=60",
        "trainer.max_steps=1",
        "trainer.val_every=1",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    metrics_path = tmp_path / "run/metrics.json"
    metrics = _strict_json(metrics_path)
    assert metrics["best"] is None and not (tmp_path / "run/checkpoints/best.pt").exists()
    assert metrics["last"]["value"] is None and metrics["last"]["diverged_tasks"] == 8
    assert "no best.pt" in (tmp_path / "run/train.log").read_text()


# -- files --------------------------------------------------------------------------------------


def test_json_is_strict_and_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        # The module reads the umask when it is imported; a fresh process sees this one.
        import importlib

        import maml_cli.engine.checkpoint as checkpoint

        importlib.reload(checkpoint)
        checkpoint.write_json({"a": math.nan, "b": [math.inf, 1.5], "c": {"d": -math.inf}}, tmp_path / "x.json")
        checkpoint.save_checkpoint({"w": torch.ones(2)}, tmp_path / "x.pt")
    finally:
        os.umask(old)
        importlib.reload(checkpoint)
    assert _strict_json(tmp_path / "x.json") == {"a": None, "b": [None, 1.5], "c": {"d": None}}
    for name in ("x.json", "x.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_run_files_are_written_with_the_users_umask(tmp_path):
    proc = run_cli("maml-train", *TINY, *QUIET, "trainer.max_steps=1", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    mask = os.umask(0)
    os.umask(mask)
    for path in ("run/checkpoints/last.pt", "run/checkpoints/best.pt", "run/metrics.json"):
        assert stat.S_IMODE((tmp_path / path).stat().st_mode) == 0o666 & ~mask, path


def test_write_json_and_save_checkpoint_are_the_same_atomic_write(tmp_path):
    write_json({"x": 1}, tmp_path / "a.json")
    save_checkpoint({"x": 1}, tmp_path / "a.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.pt"]  # no temporary left


# -- logs and TensorBoard -------------------------------------------------------------------------


def test_the_final_figure_is_logged_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = run_cli("maml-train", *TINY, *QUIET, "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    events = EventAccumulator(str(tmp_path / "run/tb"), size_guidance={"images": 0})
    events.Reload()
    steps = [event.step for event in events.Images("val/adaptation")]
    assert sorted(steps) == [3, 6], steps  # one per validation, the final one once


def test_help_lists_the_options_a_user_can_pick_and_no_schemas(tmp_path):
    proc = run_cli("maml-train", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "_schema" not in proc.stdout
    groups = dict(
        line.split(": ", 1) for line in proc.stdout.splitlines() if line.startswith(("dataset: ", "inner_loop: "))
    )
    assert groups["dataset"].split(", ")[-1] == "tieredimagenet" and "sinusoid" in groups["dataset"]
    assert set(groups["inner_loop"].split(", ")) == {
        "anil",
        "fomaml",
        "imaml",
        "maml",
        "maml_rl",
        "mamlpp",
        "metasgd",
        "reptile",
    }
    assert "hparams_search: omniglot_optuna, sinusoid_optuna" in proc.stdout
