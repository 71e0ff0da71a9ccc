"""Top-k checkpoints during training and their ensemble in maml-eval (MAML++'s evaluation protocol)."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import torch

from maml_cli.algorithms import MAML
from maml_cli.data import SinusoidTasks
from maml_cli.engine.evaluation import average_predictions, score_ensemble, score_tasks
from maml_cli.engine.trainer import Trainer
from maml_cli.engine.world import SingleProcess
from maml_cli.models import MLP

from .helpers import TINY, run_cli
from .test_cli import QUIET, assert_one_line_error


def test_trainer_keeps_the_k_best_validations_and_removes_the_rest(tmp_path):
    proc = run_cli(
        "maml-train", *TINY, *QUIET, "trainer.val_every=1", "trainer.keep_top_k=2", "hydra.run.dir=run", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    top = tmp_path / "run/checkpoints/top"
    index = json.loads((top / "index.json").read_text())
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    history = sorted(metrics["history"], key=lambda h: h["value"])  # MSE: lower is better
    assert [e["step"] for e in index["checkpoints"]] == [h["step"] for h in history[:2]]
    assert sorted(p.name for p in top.glob("*.pt")) == sorted(e["file"] for e in index["checkpoints"])
    best = torch.load(tmp_path / "run/checkpoints/best.pt", weights_only=True)
    first = torch.load(top / index["checkpoints"][0]["file"], weights_only=True)
    assert first["step"] == best["step"]
    for name, value in best["model"].items():
        assert torch.equal(value, first["model"][name])

    proc = run_cli(
        "maml-eval",
        f"checkpoint={tmp_path / 'run/checkpoints/best.pt'}",
        "eval.ensemble_top_k=2",
        "eval.episodes=20",
        "eval.output=ens.json",
        "hydra.run.dir=e",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "ens.json").read_text())
    assert result["ensemble_top_k"] == 2
    assert [m["step"] for m in result["ensemble"]] == [e["step"] for e in index["checkpoints"]]
    assert "ensemble of the 2 best validated checkpoints" in proc.stdout

    proc = run_cli(
        "maml-eval",
        f"checkpoint={tmp_path / 'run/checkpoints/best.pt'}",
        "eval.ensemble_top_k=3",
        "hydra.run.dir=e3",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "eval.ensemble_top_k=3", "lists 2 checkpoints", "trainer.keep_top_k>=3")


def test_equal_validations_rank_the_earlier_checkpoint_first_as_best_pt_does(tmp_path):
    trainer = SimpleNamespace(
        cfg=SimpleNamespace(trainer=SimpleNamespace(keep_top_k=2)),
        tasks=SimpleNamespace(higher_is_better=True, metric_name="accuracy"),
        top=[],
        ckpt_dir=tmp_path,
        state_dict=lambda: {"step": 0},
        world=SingleProcess(),
    )
    trainer._save = lambda name, path=None, **extra: Trainer._save(trainer, name, path, **extra)
    for step, value in ((100, 0.9), (200, 0.95), (300, 0.95), (400, 0.95)):
        Trainer._keep_top_k(trainer, {"step": step, "value": value})
    assert [e["step"] for e in trainer.top] == [200, 300]
    assert sorted(p.name for p in (tmp_path / "top").glob("*.pt")) == ["step_00000200.pt", "step_00000300.pt"]


def test_ensemble_without_kept_checkpoints_says_how_to_get_them(tmp_path):
    proc = run_cli("maml-train", *TINY, *QUIET, "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "run/checkpoints/top").exists()  # keep_top_k defaults to 0
    proc = run_cli(
        "maml-eval", f"checkpoint={tmp_path / 'run/checkpoints/last.pt'}", "eval.ensemble_top_k=2", cwd=tmp_path
    )
    assert_one_line_error(proc, "eval.ensemble_top_k=2 needs", "trainer.keep_top_k>=2")


def test_ensemble_scores_the_averaged_predictions():
    torch.manual_seed(0)
    tasks = SinusoidTasks(shots=5, query=10)
    a = MAML(MLP(1, 1, [16]), tasks.loss, lr=0.01, eval_steps=2)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.3 * torch.randn_like(p))
    # An ensemble of one model with itself is that model.
    alone = score_tasks(a, tasks, "test", 12, steps=2, batch_size=5)
    torch.testing.assert_close(score_ensemble([a, a], tasks, "test", 12, steps=2, batch_size=5), alone)
    # Two different models: the MSE of their mean prediction, computed here by hand.
    scores = score_ensemble([a, b], tasks, "test", 12, steps=2, batch_size=5)
    batch = next(iter(tasks.held_out("test", 12, 12)))
    mean_out = (a.evaluate(batch, lambda o, y: o) + b.evaluate(batch, lambda o, y: o)) / 2
    by_hand = ((mean_out - batch.query_y) ** 2).mean(dim=(2, 3))
    torch.testing.assert_close(scores, by_hand)


def test_classification_ensembles_average_probabilities():
    logits = [torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    probs = average_predictions(logits, "accuracy")
    # Averaged logits would pick class 0 (2.0 vs 0.5); averaged probabilities too, with these values:
    expected = (logits[0].softmax(-1) + logits[1].softmax(-1)) / 2
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(average_predictions(logits, "mse"), torch.tensor([[2.0, 0.5]]))
