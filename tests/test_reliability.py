"""Nothing lost, nothing silent: one run per run dir, resume that cannot drift, one line per failure.

Every test runs the installed CLIs as a user would and checks exit codes, error lines and files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from maml_cli.engine import Trainer, run_dir
from maml_cli.engine.checkpoint import load_checkpoint

from .helpers import BIN, TINY, compose_train, run_cli
from .test_cli import assert_one_line_error

QUIET = ("trainer.progress=false", "trainer.figures=false")
#: A run that goes on until it is stopped: 100k steps, no validation, no checkpoint until then.
LONG = (
    "trainer.max_steps=100000",
    "trainer.meta_batch_size=4",
    "trainer.val_every=1000000",
    "trainer.ckpt_every=1000000",
    "model.hidden_sizes=[16,16]",
    *QUIET,
)


def _start(*args: str, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MAML_DEBUG")}
    return subprocess.Popen(
        [str(BIN / "maml-train"), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


# -- item 2: one run per run dir ------------------------------------------------------------------


def test_runs_started_in_the_same_second_get_their_own_default_dirs(tmp_path):
    procs = [_start(*TINY, *QUIET, cwd=tmp_path) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    dirs = sorted(p.parent.parent for p in tmp_path.glob("outputs/train/*/*/checkpoints/last.pt"))
    assert len(dirs) == 2, dirs
    for d in dirs:
        assert load_checkpoint(d / "checkpoints/last.pt")["step"] == 6
        assert json.loads((d / "metrics.json").read_text())["steps"] == 6


def test_a_run_dir_in_use_is_refused_and_left_alone(tmp_path):
    first = _start(*LONG, "hydra.run.dir=run", cwd=tmp_path)
    try:
        _wait_for(tmp_path / "run/tb", first)
        config = (tmp_path / "run/.hydra/config.yaml").read_text()
        log = (tmp_path / "run/train.log").read_text()
        second = run_cli("maml-train", *TINY, *QUIET, "seed=1", "hydra.run.dir=run", cwd=tmp_path)
        line = assert_one_line_error(second, "run dir", "is in use by another running", f"pid {first.pid}")
        assert second.returncode == 1, line
        assert (tmp_path / "run/.hydra/config.yaml").read_text() == config
        assert (tmp_path / "run/train.log").read_text() == log
        # maml-eval into the same dir is refused the same way, before it writes anything there.
        evaluated = run_cli("maml-eval", "checkpoint=nothing.pt", "hydra.run.dir=run", cwd=tmp_path)
        assert_one_line_error(evaluated, "is in use by another running")
        assert not (tmp_path / "run/evaluate.log").exists()
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, err


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path):
    first = _start(*LONG, "hydra.run.dir=run", cwd=tmp_path)
    _wait_for(tmp_path / "run/tb", first)
    first.kill()  # SIGKILL: no handler runs, the lock file stays behind
    first.communicate(timeout=60)
    assert (tmp_path / "run" / run_dir.LOCK_NAME).read_text().startswith(f"pid {first.pid}:")
    proc = run_cli("maml-train", *TINY, *QUIET, "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["step"] == 6


def test_eval_refuses_a_run_dir_that_a_live_process_holds(tmp_path):
    """The lock is the kernel's (flock), so a lock held by this test process is as real as any."""
    train = run_cli("maml-train", *TINY, *QUIET, "hydra.run.dir=run", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    held = run_dir.acquire(tmp_path / "busy")
    try:
        proc = run_cli("maml-eval", "checkpoint=run/checkpoints/last.pt", "hydra.run.dir=busy", cwd=tmp_path)
        assert_one_line_error(proc, f"run dir {held} is in use", f"pid {os.getpid()}")
    finally:
        run_dir.release(held)
    proc = run_cli(
        "maml-eval", "checkpoint=run/checkpoints/last.pt", "eval.episodes=10", "hydra.run.dir=busy", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "busy/eval.json").read_text())["episodes"] == 10


# -- item 3: resume cannot drift -------------------------------------------------------------------


@pytest.fixture
def six_steps(tmp_path):
    """A finished 6-step run in ``run/`` whose config differs from the defaults (meta-batch 4)."""
    proc = run_cli("maml-train", *TINY, *QUIET, "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return tmp_path / "run"


def test_resume_auto_continues_with_the_runs_own_config_and_keeps_its_record(six_steps, tmp_path):
    original = (six_steps / ".hydra/config.yaml").read_text()
    proc = run_cli("maml-train", "hydra.run.dir=run", "trainer.resume=auto", "trainer.max_steps=9", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    state = load_checkpoint(six_steps / "checkpoints/last.pt")
    assert state["step"] == 9
    # Not the defaults (meta-batch 25, hidden [40, 40]): the run's own config, with the allowed change.
    assert state["config"]["trainer"]["meta_batch_size"] == 4
    assert state["config"]["model"]["hidden_sizes"] == [16, 16]
    assert state["config"]["trainer"]["max_steps"] == 9
    assert (six_steps / ".hydra/config.yaml").read_text() == original
    (segment,) = (six_steps / ".hydra/resumed").iterdir()
    assert (segment / "config.yaml").exists()
    record = json.loads((segment / "resume.json").read_text())
    assert record["step"] == 6 and record["changed"] == {"trainer.max_steps": {"checkpoint": 6, "now": 9}}


@pytest.mark.parametrize(
    "override,fragments",
    [
        ("optimizer.lr=0.5", ["optimizer.lr: 0.001 -> 0.5", "trainer.resume_override=true"]),
        ("optimizer=sgd", ["optimizer._target_: 'torch.optim.Adam' -> 'torch.optim.SGD'"]),
        ("trainer.meta_batch_size=25", ["trainer.meta_batch_size: 4 -> 25"]),
    ],
)
def test_resume_refuses_a_changed_config_in_one_line(six_steps, tmp_path, override, fragments):
    before = {p: p.read_bytes() for p in six_steps.rglob("*") if p.is_file() and p.name not in ("train.log", ".lock")}
    proc = run_cli("maml-train", "hydra.run.dir=run", "trainer.resume=auto", override, cwd=tmp_path)
    line = assert_one_line_error(proc, "trainer.resume=auto continues", *fragments)
    assert proc.returncode == 1, line
    after = {p: p.read_bytes() for p in six_steps.rglob("*") if p.is_file() and p.name not in ("train.log", ".lock")}
    assert after == before  # nothing rewritten, no .hydra/resumed/ segment left behind


def test_resume_override_really_applies_the_learning_rate(six_steps, tmp_path):
    proc = run_cli(
        "maml-train",
        "hydra.run.dir=run",
        "trainer.resume=auto",
        "trainer.max_steps=8",
        "optimizer.lr=0.5",
        "trainer.resume_override=true",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "changed config: optimizer.lr: 0.001 -> 0.5" in proc.stdout
    state = load_checkpoint(six_steps / "checkpoints/last.pt")
    assert state["config"]["optimizer"]["lr"] == 0.5
    # The saved Adam state would have put 0.001 back; the constant schedule keeps the config's rate.
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [0.5]
    assert state["scheduler"]["base_lrs"] == [0.5]
    (segment,) = (six_steps / ".hydra/resumed").iterdir()
    assert json.loads((segment / "resume.json").read_text())["changed"]["optimizer.lr"] == {
        "checkpoint": 0.001,
        "now": 0.5,
    }


def test_resume_override_to_another_optimizer_starts_it_afresh(six_steps, tmp_path):
    proc = run_cli(
        "maml-train",
        "hydra.run.dir=run",
        "trainer.resume=auto",
        "trainer.max_steps=8",
        "optimizer=sgd",
        "trainer.resume_override=true",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "the optimizer starts afresh" in proc.stdout
    state = load_checkpoint(six_steps / "checkpoints/last.pt")
    assert state["step"] == 8 and state["config"]["optimizer"]["_target_"] == "torch.optim.SGD"
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.9


def test_the_printed_resume_command_continues_the_run_exactly(tmp_path):
    overrides = (
        "trainer.max_steps=1500",
        "trainer.meta_batch_size=5",
        "model.hidden_sizes=[16,16]",
        "trainer.val_every=1000000",
        "trainer.ckpt_every=1000000",
        "optimizer.schedule=cosine",
        *QUIET,
    )
    first = _start(*overrides, "hydra.run.dir=run dir", cwd=tmp_path)  # a space: quoting must hold
    _wait_for(tmp_path / "run dir/tb", first)
    time.sleep(1.0)
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM, stderr
    command = stderr.strip().splitlines()[-1].split("continue with ", 1)[1]
    assert "same overrides" not in command
    stopped = load_checkpoint(tmp_path / "run dir/checkpoints/last.pt")["step"]
    assert 0 < stopped < 1500
    resumed = subprocess.run(
        f"PATH={BIN}:$PATH {command}", shell=True, cwd=tmp_path / "..", capture_output=True, text=True, timeout=240
    )
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(tmp_path / "run dir/checkpoints/last.pt")
    assert final["step"] == 1500 and final["config"]["trainer"]["meta_batch_size"] == 5

    straight = Trainer(compose_train(*overrides), tmp_path / "straight")
    straight.fit()
    for name, value in straight.algorithm.state_dict().items():
        assert torch.equal(value, final["model"][name]), name


# -- item 4: every failure one line, naming its file ---------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (a real full disk, ENOSPC from the kernel); root only, as mounting needs it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` up to ``leave`` free bytes."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    with open(disk / "filler", "wb") as handle:
        handle.write(b"\0" * max(free - leave, 0))


def _no_noise(proc: subprocess.CompletedProcess) -> None:
    for noise in ("Traceback", "Exception in thread", "Error executing job", "--- Logging error ---"):
        assert noise not in proc.stderr + proc.stdout, proc.stderr


@pytest.mark.parametrize("leave", [0, 8 * 1024, 48 * 1024])
def test_a_full_disk_is_one_line_and_keeps_what_was_written(small_disk, tmp_path, leave):
    """0 bytes: Hydra's .hydra/ at start; more: the log, TensorBoard or a checkpoint fills it."""
    keep = small_disk / "run/checkpoints/kept.pt"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"an earlier file")
    _fill(small_disk, leave)
    proc = run_cli("maml-train", *TINY, *QUIET, f"hydra.run.dir={small_disk / 'run'}", cwd=tmp_path)
    line = assert_one_line_error(proc, "No space left on device", str(small_disk / "run"))  # names where
    assert proc.returncode == 1, line
    _no_noise(proc)
    assert keep.read_bytes() == b"an earlier file"


@pytest.fixture
def read_only(tmp_path):
    """Make a dir read-only for real: a read-only bind mount as root (root ignores permission
    bits), permission bits otherwise."""
    made: list[Path] = []

    def make(path: Path) -> Path:
        as_root = os.geteuid() == 0
        if as_root:
            subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
            subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        else:
            for p in [path, *path.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o555)
        made.append(path)
        return path

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(path)], check=False)
        else:
            for p in [path, *path.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o755)


def test_a_read_only_run_dir_is_one_line_for_train_and_eval(six_steps, tmp_path, read_only):
    before = {p: p.read_bytes() for p in six_steps.rglob("*") if p.is_file()}
    read_only(six_steps)
    train = run_cli("maml-train", *TINY, *QUIET, "hydra.run.dir=run", "trainer.resume=auto", cwd=tmp_path)
    assert_one_line_error(train, str(six_steps), "Read-only file system" if os.geteuid() == 0 else "Permission")
    _no_noise(train)
    evaluated = run_cli("maml-eval", "checkpoint=run/checkpoints/last.pt", "hydra.run.dir=run", cwd=tmp_path)
    assert_one_line_error(evaluated, str(six_steps))
    _no_noise(evaluated)
    assert {p: p.read_bytes() for p in six_steps.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("command", ["maml-train", "maml-eval"])
def test_a_log_file_that_cannot_be_opened_is_one_line_naming_it(six_steps, tmp_path, command):
    (tmp_path / "busy").mkdir()
    log = tmp_path / "busy" / ("train.log" if command == "maml-train" else "evaluate.log")
    log.mkdir()  # a directory where the log file should be: open() fails, as for any user
    args = (*TINY, *QUIET) if command == "maml-train" else ("checkpoint=run/checkpoints/last.pt",)
    proc = run_cli(command, *args, "hydra.run.dir=busy", cwd=tmp_path)
    assert_one_line_error(proc, f"cannot write the log file {log}", "Is a directory")
    _no_noise(proc)


def test_tensorboard_that_cannot_write_is_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run/tb").write_text("a file where TensorBoard's dir should be")
    proc = run_cli("maml-train", *TINY, *QUIET, "hydra.run.dir=run", cwd=tmp_path)
    assert_one_line_error(proc, "cannot write TensorBoard events in", "run/tb")
    _no_noise(proc)
    assert (tmp_path / "run/tb").read_text() == "a file where TensorBoard's dir should be"


def _png(path: Path, size: int) -> Path:
    from PIL import Image

    Image.new("L", (size, size), color=128).save(path)
    return path


def test_a_png_with_a_broken_chunk_is_named(tmp_path):
    from maml_cli.data.image_files import decode_files
    from maml_cli.errors import MamlError

    good, bad = _png(tmp_path / "good.png", 8), _png(tmp_path / "bad.png", 8)
    data = bytearray(bad.read_bytes())
    at = data.index(b"IDAT") + 6
    data[at] ^= 0xFF  # a flipped byte inside the IDAT chunk: its CRC no longer matches
    bad.write_bytes(bytes(data))
    with pytest.raises(MamlError, match=r"cannot decode image .*bad\.png.*replace or remove the file"):
        decode_files([good, bad], [0, 1], ["a", "b"], 8, 1)


@pytest.mark.parametrize("size", [12, 20])  # 144 px: PIL's warning; 400 px (over twice the limit): its error
def test_a_decompression_bomb_is_named(tmp_path, monkeypatch, size):
    from PIL import Image

    from maml_cli.data.image_files import decode_files
    from maml_cli.errors import MamlError

    image = _png(tmp_path / "huge.png", size)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(MamlError, match=r"image .*huge\.png is too large to decode safely"):
        decode_files([image], [0], ["a"], 8, 1)


def test_too_few_images_names_the_class(tmp_path):
    from maml_cli.data.images import FewShotImageTasks, ImageCache, SplitClasses
    from maml_cli.errors import ConfigError

    labels = [0] * 5 + [1] * 2 + [2] * 5 + [3] * 5 + [4] * 5 + [5] * 5
    cache = ImageCache(torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8), torch.tensor(labels), list("abcdef"))
    splits = {"train": SplitClasses.of([0, 1]), "val": SplitClasses.of([2, 3]), "test": SplitClasses.of([4, 5])}
    with pytest.raises(ConfigError, match=r"class \(folder\) 'b' has only 2"):
        FewShotImageTasks(cache, splits, ways=2, shots=1, query=2)
