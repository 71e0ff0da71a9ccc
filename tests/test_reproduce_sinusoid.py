"""scripts/reproduce_sinusoid.py: its in-process scores are maml-eval's, its amplitudes are the
test tasks' own, its test-protocol selection picks the best kept snapshot, and a run of the script
on a finished (tiny) run writes the per-seed and pooled table."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maml_cli.data import SinusoidTasks
from maml_cli.errors import ConfigError

from .helpers import BIN, TINY, run_cli
from .test_cli import QUIET

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import reproduce_sinusoid as rs  # noqa: E402


@pytest.fixture(scope="module")
def sine_run(tmp_path_factory) -> Path:
    """A tiny paper-preset run (6 steps, validated at 3 and 6) that keeps every snapshot, in the
    layout the script uses: ``OUT/seed0/train``."""
    out = tmp_path_factory.mktemp("sine")
    proc = run_cli(
        "maml-train",
        "experiment=sinusoid_maml_paper",
        *TINY,
        *QUIET,
        "trainer.keep_top_k=100",
        "trainer.figures=false",
        "hydra.run.dir=seed0/train",
        cwd=out,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_in_process_scores_equal_maml_eval(sine_run, tmp_path):
    checkpoint = sine_run / "seed0/train/checkpoints/last.pt"
    for lr in (None, 0.001):
        extra = [] if lr is None else [f"inner_loop.lr={lr}"]
        proc = run_cli(
            "maml-eval",
            f"checkpoint={checkpoint}",
            "dataset.shots=5",
            "dataset.query=100",
            "eval.steps=10",
            f"eval.output={tmp_path / 'eval.json'}",
            f"hydra.run.dir={tmp_path / 'eval'}",
            *extra,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        expected = json.loads((tmp_path / "eval.json").read_text())["per_step"]
        scored = rs.task_scores(checkpoint, "test", lr)
        assert scored["scores"].shape == (11, 600) and scored["step"] == 6
        got = rs.summary(scored["scores"], scored["amplitude"])
        for k in (1, 5, 10):
            assert got[k]["mean"] == pytest.approx(expected[k]["mean"], rel=1e-5)
            assert got[k]["median"] == pytest.approx(expected[k]["median"], rel=1e-5)
            assert got[k]["diverged_tasks"] == expected[k]["diverged_tasks"]
    # A smaller inner rate changes the scores: the override reaches the algorithm.
    slow = rs.task_scores(checkpoint, "test", 1e-4)["scores"]
    assert not torch.allclose(slow[10], scored["scores"][10])


def test_amplitudes_are_those_of_the_scored_tasks(sine_run):
    scored = rs.task_scores(sine_run / "seed0/train/checkpoints/last.pt", "test")
    amplitude = scored["amplitude"]
    assert amplitude.shape == (600,) and 0.1 <= amplitude.min() and amplitude.max() <= 5.0
    tasks = SinusoidTasks(shots=5, query=100, seed=0)
    batch = tasks.fixed_tasks("test", 600)
    peak = torch.cat([batch.support_y, batch.query_y], dim=1).abs().amax(dim=(1, 2))
    # 105 points over [-5, 5], more than 1.5 periods: the largest |y| is the amplitude, nearly.
    assert torch.all(peak <= amplitude + 1e-5) and torch.all(peak >= 0.95 * amplitude)


def test_summary_counts_tasks_made_worse_and_diverged():
    scores = torch.ones(11, 4)
    scores[1:, 1] = 2.0  # worse than before, not diverged
    scores[1:, 2] = 500.0  # diverged (more than 100x)
    scores[10, 3] = math.inf
    scores[5, 0] = math.nan  # a NaN is worse and diverged, too
    amplitude = torch.tensor([1.0, 4.5, 4.9, 3.0])
    got = rs.summary(scores, amplitude)
    assert got[1]["worse_tasks"] == 2 and got[1]["diverged_tasks"] == 1
    assert got[5]["worse_tasks"] == 3 and got[5]["diverged_tasks"] == 2
    assert got[10]["worse_tasks"] == 3 and got[10]["diverged_tasks"] == 2
    assert [t["amplitude"] for t in got[10]["unstable"]] == [3.0, 4.9, 4.5]  # worst first, inf before 500


def test_test_protocol_selection_picks_the_snapshot_best_on_validation(sine_run, tmp_path):
    run_dir = sine_run / "seed0/train"
    chosen = rs.select_by_test_protocol(run_dir, None)
    entries = json.loads((run_dir / "checkpoints/top/index.json").read_text())["checkpoints"]
    assert sorted(e["step"] for e in entries) == [3, 6]
    means = {
        e["step"]: rs.task_scores(run_dir / "checkpoints/top" / e["file"], "val")["scores"][10].mean().item()
        for e in entries
    }
    assert chosen["step"] == min(means, key=lambda s: (means[s], s))
    assert chosen["val_mean"] == pytest.approx(min(means.values()))
    # Every snapshot's mean is kept next to the run, and a second call reads them back.
    cache = run_dir / "select_lrNone.json"
    assert {int(k): v for k, v in json.loads(cache.read_text()).items()} == pytest.approx(means)
    other = next(step for step in means if step != chosen["step"])
    cache.write_text(json.dumps({str(step): -1.0 if step == other else 1.0 for step in means}))
    assert rs.select_by_test_protocol(run_dir, None)["step"] == other
    cache.unlink()
    assert rs.select_by_test_protocol(tmp_path, None) is None  # no snapshots kept


def test_script_writes_the_per_seed_and_pooled_table(sine_run):
    proc = subprocess.run(
        [
            str(BIN / "python"),
            str(SCRIPTS / "reproduce_sinusoid.py"),
            "--reuse",
            "--seeds",
            "0",
            "--out",
            str(sine_run),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[seed 0 | git " in proc.stdout and "1 thread(s)]" in proc.stdout
    results = json.loads((sine_run / "results.json").read_text())
    assert results["alpha_train"] == 0.001 and results["alpha_test"] == 0.001  # the preset's
    seed = results["seeds"]["0"]
    assert seed["last"]["step"] == 6 and seed["sel"]["step"] in (3, 6)
    for name in ("best", "last", "sel"):
        for k in ("1", "5", "10"):
            assert results["pooled"][name][k]["mean"] == pytest.approx(seed[name][k]["mean"])  # one seed: the same
    assert "targets met on every seed" in proc.stdout


def test_sharpness_is_the_top_hessian_eigenvalue_along_the_scored_trajectory(sine_run):
    import sinusoid_sharpness as sh

    checkpoint = sine_run / "seed0/train/checkpoints/last.pt"
    result = sh.sharpness_trajectories(checkpoint, tasks=2, iters=100)
    assert result["alpha"] == 0.001 and result["lam"].shape == (2, 11)
    # The query MSE along the way is what the test protocol scores for the same tasks.
    assert torch.allclose(result["mse"].T, rs.task_scores(checkpoint, "test", tasks=2)["scores"], rtol=1e-4)
    # At the initialisation: the largest-magnitude eigenvalue of the exact support-loss Hessian.
    run, _ = rs.load_run(checkpoint)
    batch = run.tasks.fixed_tasks("test", 2)
    params = {k: v.detach() for k, v in run.algorithm.initial_params().items()}
    names, shapes = list(params), [v.shape for v in params.values()]
    flat = torch.cat([v.flatten() for v in params.values()])

    def loss(vector, x, y):
        parts = dict(zip(names, (p.view(s) for p, s in zip(vector.split([s.numel() for s in shapes]), shapes))))
        return run.tasks.loss(run.algorithm.forward_with(parts, x), y)

    for task in range(2):
        hessian = torch.autograd.functional.hessian(
            lambda v, t=task: loss(v, batch.support_x[t], batch.support_y[t]), flat
        )
        eigenvalues = torch.linalg.eigvalsh(hessian.double())
        top = eigenvalues[eigenvalues.abs().argmax()].item()
        assert result["lam"][task, 0].item() == pytest.approx(top, rel=1e-2)


def test_sinusoid_held_out_tasks_take_their_own_sizes():
    plain = SinusoidTasks(shots=10, query=10, seed=2)
    sized = SinusoidTasks(shots=10, query=10, seed=2, eval_shots=5, eval_query=100)
    train = sized.sample(3, torch.Generator().manual_seed(0))
    assert train.support_x.shape == (3, 10, 1) and train.query_x.shape == (3, 10, 1)
    val = sized.fixed_tasks("val", 30)
    assert val.support_x.shape == (30, 5, 1) and val.query_y.shape == (30, 100, 1)
    # The same functions as the plainly sized tasks of the split: only the points differ.
    amplitude, phase, _ = plain.sample_task_parameters(30, plain.split_generator("val"))
    torch.testing.assert_close(val.support_y, amplitude * torch.sin(val.support_x - phase))
    torch.testing.assert_close(val.query_y, amplitude * torch.sin(val.query_x - phase))
    # Without eval sizes the held-out tasks are those of before (one sample from the split's generator).
    again = plain.sample(30, plain.split_generator("val"))
    assert torch.equal(plain.fixed_tasks("val", 30).support_x, again.support_x)
    with pytest.raises(ConfigError, match="eval_shots"):
        SinusoidTasks(eval_shots=0)


def test_training_validates_with_the_eval_sizes_and_maml_eval_reports_them(tmp_path):
    proc = run_cli(
        "maml-train",
        *TINY,
        *QUIET,
        "inner_loop.eval_steps=10",
        "dataset.eval_shots=5",
        "dataset.eval_query=100",
        "trainer.val_tasks=40",
        "trainer.figures=false",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    last = tmp_path / "run/checkpoints/last.pt"
    expected = rs.task_scores(last, "val", tasks=40)["scores"][10].double().mean().item()
    assert metrics["history"][-1]["step"] == 6
    assert metrics["history"][-1]["value"] == pytest.approx(expected, rel=1e-5)
    proc = run_cli("maml-eval", f"checkpoint={last}", "eval.episodes=20", "hydra.run.dir=eval", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "eval/eval.json").read_text())
    assert (result["shots"], result["query"], result["steps"]) == (5, 100, 10)
