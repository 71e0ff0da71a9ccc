"""The installed commands end to end, as a user runs them: files written, exit codes, messages."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from maml_cli.engine import Trainer
from maml_cli.engine.checkpoint import load_checkpoint

from .helpers import BIN, TINY, compose_train, run_cli

QUIET = ("trainer.progress=false",)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny real training run, shared by the tests that only read its outputs."""
    root = tmp_path_factory.mktemp("trained")
    proc = run_cli("maml-train", *TINY, *QUIET, "hydra.run.dir=run", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "run"


def test_train_writes_checkpoints_metrics_tensorboard_and_figure(trained):
    assert load_checkpoint(trained / "checkpoints/last.pt")["step"] == 6
    assert load_checkpoint(trained / "checkpoints/best.pt")["step"] in (3, 6)
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["metric"] == "mse"
    assert metrics["last"]["value"] > 0 and metrics["best"]["step"] in (3, 6)
    assert list((trained / "tb").glob("events.out.tfevents.*"))
    assert (trained / "figures/adaptation.png").read_bytes()[:4] == b"\x89PNG"
    assert (trained / ".hydra/config.yaml").exists()


def test_tensorboard_has_the_promised_scalars(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {
        "train/loss_before",
        "train/loss_after",
        "train/grad_norm",
        "train/lr",
        "train/tasks_per_s",
        "val/mse",
        "val/mse_before_adaptation",
    }
    assert expected <= tags
    assert [e.step for e in events.Scalars("val/mse")] == [3, 6]
    assert events.Tags()["images"] == ["val/adaptation"]


def test_eval_reports_mean_and_ci_before_and_after(trained, tmp_path):
    out = tmp_path / "res/eval.json"
    proc = run_cli(
        "maml-eval",
        f"checkpoint={trained / 'checkpoints/best.pt'}",
        "eval.episodes=40",
        "eval.steps=3",
        "dataset.shots=5",
        f"eval.output={out}",
        f"hydra.run.dir={tmp_path / 'e'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["metric"] == "mse" and result["episodes"] == 40 and result["steps"] == 3
    assert result["shots"] == 5 and len(result["per_step"]) == 4
    assert result["pre_adaptation_mean"] == result["per_step"][0]["mean"]
    assert result["mean"] == result["per_step"][3]["mean"] and result["ci95"] > 0
    assert "after 3 steps" in proc.stdout and "before" in proc.stdout and "95% CI" in proc.stdout


def test_eval_defaults_to_its_run_dir_and_the_runs_eval_steps(trained, tmp_path):
    proc = run_cli(
        "maml-eval",
        f"checkpoint={trained / 'checkpoints/last.pt'}",
        "eval.episodes=10",
        "hydra.run.dir=ev",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "ev/eval.json").read_text())
    assert result["steps"] == 2  # TINY sets inner_loop.eval_steps=2
    assert result["split"] == "test" and result["shots"] == 10


def test_multirun_gives_each_job_its_own_dir(tmp_path):
    proc = run_cli(
        "maml-train",
        "-m",
        *TINY,
        *QUIET,
        "trainer.figures=false",
        "inner_loop.lr=0.01,0.02",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lrs = []
    for job in ("0", "1"):
        assert json.loads((tmp_path / "sweep" / job / "metrics.json").read_text())["steps"] == 6
        cfg = load_checkpoint(tmp_path / "sweep" / job / "checkpoints/last.pt")["config"]
        lrs.append(cfg["inner_loop"]["lr"])
    assert lrs == [0.01, 0.02]


def test_help_and_cfg_job(tmp_path):
    helped = run_cli("maml-train", "--help", cwd=tmp_path)
    assert helped.returncode == 0
    assert "maml-train: meta-train" in helped.stdout
    groups = dict(line.split(": ", 1) for line in helped.stdout.splitlines() if line.startswith("inner_loop: "))
    assert {"anil", "fomaml", "maml"} <= set(groups["inner_loop"].split(", "))
    shown = run_cli("maml-train", "--cfg", "job", "inner_loop=fomaml", cwd=tmp_path)
    assert shown.returncode == 0
    cfg = yaml.safe_load(shown.stdout)
    assert cfg["inner_loop"]["first_order"] is True and cfg["trainer"]["max_steps"] == 70000
    assert not (tmp_path / "outputs").exists()  # --cfg only prints


def test_user_model_from_their_own_config_dir(tmp_path):
    (tmp_path / "my_net.py").write_text(
        "from torch import nn\n"
        "class Wide(nn.Module):\n"
        "    def __init__(self, width):\n"
        "        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, 1))\n"
        "    def forward(self, x):\n"
        "        return self.body(x)\n"
    )
    (tmp_path / "conf/model").mkdir(parents=True)
    (tmp_path / "conf/model/wide.yaml").write_text("_target_: my_net.Wide\nwidth: 24\n")
    args = [a for a in TINY if not a.startswith("model.")]
    proc = run_cli("maml-train", "--config-dir", "conf", "model=wide", *args, *QUIET, "hydra.run.dir=r", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    state = load_checkpoint(tmp_path / "r/checkpoints/last.pt")
    assert state["model"]["model.body.0.weight"].shape == (24, 1)


def test_sigterm_saves_last_and_resume_matches_an_uninterrupted_run(tmp_path):
    overrides = [
        "trainer.max_steps=2000",
        "trainer.meta_batch_size=5",
        "model.hidden_sizes=[16,16]",
        "trainer.val_every=1000000",
        "trainer.ckpt_every=1000000",
        "trainer.figures=false",
        "optimizer.schedule=cosine",
        *QUIET,
    ]
    proc = subprocess.Popen(
        [str(BIN / "maml-train"), *overrides, "hydra.run.dir=run"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not list((tmp_path / "run").glob("tb/events.*")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM: stopped at step" in stderr.splitlines()[-1]
    stopped = load_checkpoint(tmp_path / "run/checkpoints/last.pt")["step"]
    assert 0 < stopped < 2000

    resumed = run_cli("maml-train", *overrides, "hydra.run.dir=run", "trainer.resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(tmp_path / "run/checkpoints/last.pt")

    straight = Trainer(compose_train(*overrides), tmp_path / "straight")
    straight.fit()
    for name, value in straight.algorithm.state_dict().items():
        assert torch.equal(value, final["model"][name]), name


# -- bad input: one line, non-zero exit, nothing lost -------------------------------------------


@pytest.mark.parametrize(
    "override,fragments",
    [
        ("trainer.max_step=3", ["unknown config key 'trainer.max_step'", "max_steps"]),
        ("dataset.shots=0", ["dataset.shots must be an integer >= 1, got 0"]),
        ("dataset.query=0", ["dataset.query must be"]),
        ("inner_loop.steps=0", ["inner_loop.steps must be"]),
        ("trainer.meta_batch_size=-2", ["trainer.meta_batch_size must be"]),
        ("dataset.shots=ten", ["dataset.shots", "ten"]),
        ("optimizer=rmsprop", ["optimizer/rmsprop", "adam adamw sgd"]),
        ("trainer.resume=missing.pt", ["checkpoint not found: missing.pt"]),
        ("inner_loop.lr=1e30", ["is nan at step 1", "lower optimizer.lr or inner_loop.lr"]),
    ],
)
def test_train_bad_input(tmp_path, override, fragments):
    proc = run_cli("maml-train", *TINY, *QUIET, override, "hydra.run.dir=r", cwd=tmp_path)
    assert_one_line_error(proc, *fragments)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_train_on_cuda_without_a_gpu(tmp_path):
    proc = run_cli("maml-train", *TINY, *QUIET, "trainer.device=cuda", "hydra.run.dir=r", cwd=tmp_path)
    assert_one_line_error(proc, "no CUDA GPU is visible", "trainer.device=cpu")


def test_train_unwritable_run_dir(tmp_path):
    (tmp_path / "a_file").write_text("keep me")
    proc = run_cli("maml-train", *TINY, *QUIET, "hydra.run.dir=a_file/run", cwd=tmp_path)
    assert_one_line_error(proc, "a_file/run", "Not a directory")
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_resume_from_a_corrupted_checkpoint_leaves_it_alone(trained, tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes((trained / "checkpoints/last.pt").read_bytes()[:2000])
    proc = run_cli("maml-train", *TINY, *QUIET, f"trainer.resume={bad}", "hydra.run.dir=r", cwd=tmp_path)
    assert_one_line_error(proc, "cannot load checkpoint", "corrupted")
    assert bad.read_bytes() == (trained / "checkpoints/last.pt").read_bytes()[:2000]
    assert not (tmp_path / "r/checkpoints").exists()


def _evil_checkpoint(path):
    code = (
        "import os, pickle\n"
        "class Evil:\n"
        "    def __reduce__(self):\n"
        f"        return (os.system, ('touch {path}.pwned',))\n"
        f"pickle.dump({{'format_version': 1, 'step': 0, 'model': Evil(), 'config': {{}}}}, open('{path}', 'wb'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "case,fragments",
    [
        ("no_argument", ["maml-eval needs checkpoint=PATH"]),
        ("missing", ["checkpoint not found"]),
        ("garbage", ["cannot load checkpoint", "corrupted"]),
        ("truncated", ["cannot load checkpoint", "corrupted or truncated"]),
        ("pickled_code", ["cannot load checkpoint", "never unpickled"]),
        ("not_ours", ["is not a maml-cli checkpoint"]),
    ],
)
def test_eval_bad_checkpoint(trained, tmp_path, case, fragments):
    path = tmp_path / "ckpt.pt"
    if case == "garbage":
        path.write_bytes(b"\x00\x01 not a checkpoint")
    elif case == "truncated":
        path.write_bytes((trained / "checkpoints/best.pt").read_bytes()[:3000])
    elif case == "pickled_code":
        _evil_checkpoint(path)
    elif case == "not_ours":
        torch.save({"weights": torch.zeros(3)}, path)
    args = [] if case == "no_argument" else [f"checkpoint={path}"]
    proc = run_cli("maml-eval", *args, "hydra.run.dir=e", cwd=tmp_path)
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "ckpt.pt.pwned").exists()


@pytest.mark.parametrize(
    "override,fragments",
    [
        ("eval.episodes=0", ["eval.episodes must be"]),
        ("eval.steps=0", ["eval.steps must be"]),
        ("dataset.shots=0", ["dataset.shots must be"]),
        ("dataset.shotz=3", ["unknown config key 'dataset.shotz'", "shots"]),
        ("eval.split=train", ["eval.split must be val or test"]),
    ],
)
def test_eval_bad_values(trained, tmp_path, override, fragments):
    proc = run_cli(
        "maml-eval", f"checkpoint={trained / 'checkpoints/last.pt'}", override, "hydra.run.dir=e", cwd=tmp_path
    )
    assert_one_line_error(proc, *fragments)


def test_eval_unwritable_output_keeps_existing_files(trained, tmp_path):
    (tmp_path / "a_file").write_text("keep me")
    proc = run_cli(
        "maml-eval",
        f"checkpoint={trained / 'checkpoints/last.pt'}",
        f"eval.output={tmp_path / 'a_file/eval.json'}",
        "hydra.run.dir=e",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "cannot write eval.output", "a_file")
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_own_images_train_and_evaluate_with_the_image_folder_preset(tmp_path):
    from .fixtures_images import image_folder

    image_folder(tmp_path / "my_images")  # 12 classes of 4 images
    common = [f"dataset.cache_dir={tmp_path / 'cache'}"]
    proc = run_cli(
        "maml-train",
        "experiment=image_folder",
        f"dataset.path={tmp_path / 'my_images'}",
        *common,
        "dataset.ways=2",
        "dataset.shots=1",
        "dataset.query=2",
        "dataset.image_size=16",
        "model.hidden=4",
        "dataset.split_ratios=[0.5,0.25,0.25]",
        "inner_loop.steps=1",
        "inner_loop.eval_steps=2",
        "trainer.max_steps=2",
        "trainer.val_every=1",
        "trainer.val_tasks=4",
        "trainer.meta_batch_size=2",
        *QUIET,
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["metric"] == "accuracy"
    proc = run_cli(
        "maml-eval",
        f"checkpoint={tmp_path / 'run/checkpoints/last.pt'}",
        "eval.episodes=6",
        "hydra.run.dir=ev",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "ev/eval.json").read_text())
    assert result["ways"] == 2
    # Accuracy is shown in percent wherever a person reads it: log, TensorBoard, printed table
    # (the JSON files keep the fraction).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run/tb"))
    events.Reload()
    shown = {event.step: event.value for event in events.Scalars("val/accuracy")}
    for entry in metrics["history"]:
        assert shown[entry["step"]] == pytest.approx(100 * entry["value"], abs=1e-3)
    last = metrics["last"]["value"]
    assert f"val accuracy {100 * last:.4g}% " in (tmp_path / "run/train.log").read_text()
    assert "accuracy (%)" in proc.stdout
    assert f"{100 * result['mean']:.4f}" in proc.stdout
