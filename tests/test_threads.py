"""Torch's thread count and OpenMP's wait policy: set from the config, or fitted to the cores that
other processes leave idle (see maml_cli/threads.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from maml_cli import threads
from maml_cli.threads import ThreadGovernor, configure_threads, default_threads

from .helpers import TINY, run_cli
from .test_cli import QUIET, assert_one_line_error


@pytest.mark.parametrize("key", ["trainer.num_threads=0", "trainer.num_threads=-2"])
def test_num_threads_must_be_positive_for_training(tmp_path, key):
    proc = run_cli("maml-train", *TINY, *QUIET, key, "hydra.run.dir=run", cwd=tmp_path)
    assert_one_line_error(proc, "trainer.num_threads must be an integer >= 1")
    assert proc.returncode == 1 and not (tmp_path / "run/checkpoints").exists()


def test_num_threads_is_applied_and_logged(tmp_path):
    proc = run_cli(
        "maml-train", *TINY, *QUIET, "trainer.max_steps=1", "trainer.num_threads=2", "hydra.run.dir=run", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "(2 CPU threads)" in (tmp_path / "run/train.log").read_text()
    proc = run_cli("maml-train", *TINY, *QUIET, "trainer.max_steps=1", "hydra.run.dir=run1", cwd=tmp_path)
    assert "(1 CPU threads)" in (tmp_path / "run1/train.log").read_text()  # the MLP's default
    proc = run_cli(
        "maml-eval",
        f"checkpoint={tmp_path / 'run/checkpoints/last.pt'}",
        "eval.num_threads=0",
        "hydra.run.dir=ev",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "eval.num_threads must be an integer >= 1")


def test_the_wait_policy_is_set_before_torch_loads_unless_the_user_chose_one(tmp_path):
    code = "import os, maml_cli.cli, torch; print(os.environ.get('GOMP_SPINCOUNT'))"
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(threads.SPIN_COUNT)
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"


def test_mlps_get_one_thread_and_convolutional_models_a_governor():
    assert default_threads(nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 1))) == 1
    assert default_threads(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())) is None
    before = torch.get_num_threads()
    try:
        assert configure_threads(3, nn.Conv2d(1, 1, 1)) is None and torch.get_num_threads() == 3
        governor = configure_threads(None, nn.Conv2d(1, 1, 1), settle=0.05)
        assert isinstance(governor, ThreadGovernor) and 1 <= torch.get_num_threads() <= governor.cores
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("others", "cores", "expected"),
    [(0.0, 2, 2), (0.4, 2, 2), (0.6, 2, 1), (1.0, 2, 1), (3.0, 2, 1), (1.0, 8, 7), (2.6, 8, 5)],
)
def test_the_governor_leaves_the_cores_other_processes_use(monkeypatch, others, cores, expected):
    clock = {"t": 100.0, "machine": 1000.0, "own": 10.0}
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(threads, "_machine_busy_seconds", lambda: clock["machine"])
    monkeypatch.setattr(threads, "_own_busy_seconds", lambda: clock["own"])
    before = torch.get_num_threads()
    try:
        governor = ThreadGovernor(cores=cores, interval=5.0)
        # 5 s pass: this process used 1.5 core-seconds, the others `others` cores' worth.
        clock.update(t=105.0, own=11.5, machine=1000.0 + 1.5 + 5.0 * others)
        assert governor.maybe_adjust() == expected and torch.get_num_threads() == expected
        clock.update(t=107.0, machine=clock["machine"] + 100.0)  # within the interval: no change
        assert governor.maybe_adjust() == expected
    finally:
        torch.set_num_threads(before)


def test_the_governor_sees_a_real_busy_process():
    spin = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    child = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.5)
        governor = ThreadGovernor(cores=2, interval=0.0)
        time.sleep(1.0)
        busy = governor.others_busy()
    finally:
        child.kill()
        child.wait()
    if threads._machine_busy_seconds() is None:
        pytest.fail("no /proc/stat on this machine: the governor cannot measure")
    assert busy is not None and busy >= 0.7, busy  # the child alone keeps one core busy
