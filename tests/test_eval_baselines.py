"""maml-eval's eval.baselines: other initialisations scored on the same tasks, adapted the same way."""

from __future__ import annotations

import json

from maml_cli.engine.trainer import Trainer
from tests.helpers import compose_train, run_cli


def test_a_sinusoid_checkpoint_against_a_random_initialisation_and_another_checkpoint(tmp_path):
    overrides = ("trainer.val_every=50", "trainer.val_tasks=10", "trainer.progress=false", "trainer.figures=false")
    Trainer(compose_train(*overrides, "trainer.max_steps=100"), tmp_path / "trained").fit()
    Trainer(compose_train(*overrides, "trainer.max_steps=10", "seed=1"), tmp_path / "short").fit()
    result = run_cli(
        "maml-eval",
        "checkpoint=trained/checkpoints/last.pt",
        "eval.episodes=50",
        "eval.steps=2",
        "eval.baselines=[random,short/checkpoints/last.pt]",
        "eval.output=eval.json",
        "hydra.run.dir=ev",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    random, short = evaluated["baselines"]
    assert (random["name"], short["name"]) == ("random", "short/checkpoints/last.pt")
    assert len(random["per_step"]) == len(short["per_step"]) == 3
    # 100 meta-steps of MAML beat an untrained network, before and after adaptation.
    for k in (0, 2):
        assert evaluated["per_step"][k]["mean"] < random["per_step"][k]["mean"]
    assert "baseline random:" in result.stdout and "baseline short/checkpoints/last.pt:" in result.stdout

    missing = run_cli(
        "maml-eval",
        "checkpoint=trained/checkpoints/last.pt",
        "eval.baselines=[nope.pt]",
        "hydra.run.dir=ev2",
        cwd=tmp_path,
    )
    assert missing.returncode == 1
    assert [line for line in missing.stderr.splitlines() if line.strip()] == [
        "error: eval.baselines: nope.pt is neither 'random' nor a checkpoint file; give the path of a maml-train "
        "checkpoint of the same model (e.g. a run with inner_loop.pretrain=true)"
    ]
