"""scripts/omniglot_cpu_budget.py's report on a finished (tiny) 20-way 1-shot run on the real
Omniglot: the task's name and the paper's figure, the recipe's settings, the provenance line,
the time-to-accuracy table and its figure, the number of test steps chosen on validation
episodes, and a results.json that keeps the commit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from .helpers import run_cli
from .test_omniglot import data_root

SCRIPT = Path(__file__).resolve().parent.parent / "scripts/omniglot_cpu_budget.py"


def test_reuse_reports_a_finished_20_way_run(tmp_path):
    env = {"MAML_DATA_ROOT": str(data_root()), "MAML_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "out"
    proc = run_cli(
        "maml-train",
        "experiment=omniglot_20w1s",
        "model.hidden=8",
        "inner_loop.steps=1",
        "trainer.max_steps=4",
        "trainer.meta_batch_size=2",
        "trainer.val_every=2",
        "trainer.val_tasks=6",
        "trainer.progress=false",
        "trainer.figures=false",
        f"hydra.run.dir={out / 'train'}",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(
        "maml-eval",
        f"checkpoint={out / 'train/checkpoints/best.pt'}",
        "eval.episodes=12",
        f"eval.output={out / 'eval_test.json'}",
        f"hydra.run.dir={tmp_path / 'ev'}",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    test = json.loads((out / "eval_test.json").read_text())

    report = subprocess.run(
        [sys.executable, str(SCRIPT), "--experiment", "omniglot_20w1s", "--minutes", "105"]
        + ["--out", str(out), "--reuse", "--target", "101", "--", "trainer.num_threads=1"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**env, "PATH": str(Path(sys.executable).parent)},
    )
    assert report.returncode == 0, report.stderr
    text = report.stdout
    assert "Omniglot 20-way 1-shot, CPU, budget 105 min: 4 meta-steps" in text
    # the 20-way recipe's one step of 0.4, then the user's override, which wins
    settings = text.split("settings: ", 1)[1].splitlines()[0].split()
    assert "inner_loop.steps=1" in settings and "inner_loop.lr=0.4" in settings
    assert settings[-1] == "trainer.num_threads=1"
    assert f"torch {torch.__version__} | 1 thread(s)]" in text and "[seed 0 | git " in text
    assert "paper (Finn et al., 2017, Table 1, 60,000 steps on a GPU): 95.8 ± 0.3%" in text
    assert f"test, 600 episodes, best.pt: {100 * test['mean']:.2f} ± {100 * test['ci95']:.2f}%" in text
    assert "target >= 101% (best.pt): MISSED" in text
    rows = [line.split() for line in text.split("val acc %", 1)[1].splitlines()[1:3]]
    assert [int(r[1]) for r in rows] == [2, 4]  # one row per validation: step 2 and step 4
    assert (out / "time_to_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the step count is chosen on 200 validation episodes, which the script scored itself
    val = json.loads((out / "eval_val.json").read_text())
    assert val["split"] == "val" and val["episodes"] == 200
    chosen = max(val["per_step"], key=lambda p: (p["mean"], -p["steps"]))["steps"]
    at = next(p for p in test["per_step"] if p["steps"] == chosen)
    line = f"steps chosen on validation (200 episodes): {chosen} "
    assert line in text
    assert f"best.pt after {chosen}: {100 * at['mean']:.2f} ± {100 * at['ci95']:.2f}%" in text.split(line, 1)[1]
    saved = json.loads((out / "results.json").read_text())
    assert saved["steps_chosen_on_validation"] == chosen and saved["test_at_chosen_steps"] == at
    assert saved["test"] == test and saved["metrics"]["steps"] == 4 and saved["commit"]
