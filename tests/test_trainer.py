"""The engine in-process: exact resumption, checkpoint contents and atomicity, NaN handling."""

from __future__ import annotations

import json
import os

import pytest
import torch

from maml_cli.engine import Trainer
from maml_cli.engine import checkpoint as checkpoint_module
from maml_cli.engine.checkpoint import load_checkpoint, save_checkpoint
from maml_cli.errors import CheckpointError, NonFiniteLossError


def train(cfg, run_dir):
    trainer = Trainer(cfg, run_dir)
    trainer.fit()
    return trainer


def params_of(trainer):
    return {k: v.detach().clone() for k, v in trainer.algorithm.state_dict().items()}


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_resume_continues_bit_for_bit(tiny_cfg, tmp_path, strategy):
    common = ("trainer.figures=false", f"inner_loop.task_batching={strategy}", "inner_loop.steps=2")
    straight = train(tiny_cfg(*common, "trainer.max_steps=8"), tmp_path / "straight")
    half = train(tiny_cfg(*common, "trainer.max_steps=4"), tmp_path / "resumed")
    resumed = train(tiny_cfg(*common, "trainer.max_steps=8", "trainer.resume=auto"), tmp_path / "resumed")
    assert resumed.step == straight.step == 8
    a, b = params_of(straight), params_of(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(params_of(half)["model.net.0.weight"], a["model.net.0.weight"])
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for key in opt_a:
        assert torch.equal(opt_a[key]["exp_avg_sq"], opt_b[key]["exp_avg_sq"])


def test_resume_from_an_explicit_path_into_a_new_run_dir(tiny_cfg, tmp_path):
    first = train(tiny_cfg("trainer.figures=false"), tmp_path / "a")
    resume = f"trainer.resume={tmp_path / 'a/checkpoints/last.pt'}"
    second = Trainer(tiny_cfg("trainer.figures=false", "trainer.max_steps=9", resume), tmp_path / "b")
    assert second.step == first.step == 6
    second.fit()
    assert load_checkpoint(tmp_path / "b/checkpoints/last.pt")["step"] == 9
    assert (tmp_path / "b/checkpoints/best.pt").exists()


def test_checkpoint_holds_everything_needed_and_loads_weights_only(tiny_cfg, tmp_path):
    train(tiny_cfg("optimizer.schedule=cosine"), tmp_path)
    for name in ("last.pt", "best.pt"):
        raw = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        assert {"model", "optimizer", "scheduler", "step", "rng", "config"} <= raw.keys()
        assert {"tasks", "torch", "python"} <= raw["rng"].keys()
        assert raw["config"]["inner_loop"]["task_batching"] == "auto"
        assert raw["config"]["optimizer"]["schedule"] == "cosine"
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["step"] == 6
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["scheduler"]["last_epoch"] == 6
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["metric"] == "mse" and metrics["steps"] == 6
    assert metrics["last"]["step"] == 6 and metrics["best"]["value"] <= metrics["last"]["value"]
    assert (tmp_path / "figures/adaptation.png").stat().st_size > 10_000
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "payload": torch.arange(10)}, path)
    before = path.read_bytes()

    def broken_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"step": 2}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_cfg, tmp_path):
    trainer = Trainer(tiny_cfg("trainer.max_steps=10", "trainer.figures=false"), tmp_path)
    sample = trainer.tasks.sample
    calls = {"n": 0}

    def poisoned(num_tasks, generator):
        batch = sample(num_tasks, generator)
        if generator is not trainer.task_generator:
            return batch  # validation tasks stay clean
        calls["n"] += 1
        if calls["n"] == 5:  # step 5: after the step-3 checkpoint, before the step-6 one
            batch.query_y[0, 0] = float("nan")
        return batch

    trainer.tasks.sample = poisoned
    with pytest.raises(NonFiniteLossError, match=r"meta-loss is nan at step 5.*last good checkpoint kept"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["step"] == 3
    assert all(torch.isfinite(p).all() for p in trainer.algorithm.parameters())


def test_resume_with_a_checkpoint_of_another_model_says_so(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.figures=false"), tmp_path / "a")
    other = tiny_cfg("model.hidden_sizes=[8]", f"trainer.resume={tmp_path / 'a/checkpoints/last.pt'}")
    with pytest.raises(CheckpointError, match="does not fit this run's config"):
        Trainer(other, tmp_path / "b")


def test_a_model_defined_outside_the_toolkit_trains(tiny_cfg, tmp_path):
    from omegaconf import OmegaConf

    cfg = tiny_cfg("trainer.figures=false")
    cfg.model = OmegaConf.create({"_target_": "tests.outside_model.SineNet", "width": 12})
    trainer = train(cfg, tmp_path)
    assert type(trainer.algorithm.model).__module__ == "tests.outside_model"
    assert trainer.step == 6


def test_wall_clock_budget_stops_cleanly_with_a_history(tiny_cfg, tmp_path):
    trainer = Trainer(tiny_cfg("trainer.max_steps=1000", "trainer.max_minutes=0.00001"), tmp_path)
    metrics = trainer.fit()
    assert trainer.step == 1
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["step"] == 1
    assert [h["step"] for h in metrics["history"]] == [1] and metrics["history"][0]["wall_s"] >= 0
    assert metrics["last"]["step"] == 1
