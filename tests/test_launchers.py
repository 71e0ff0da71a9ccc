"""``hydra/launcher=submitit_local`` end to end: a job that gets the scheduler's timeout signal
saves ``last.pt`` after its step, is requeued by submitit, resumes from it and ends with the
weights of a run that was never stopped; and a launcher that is not installed, or misspelt, is one
line."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import torch

from maml_cli.engine.checkpoint import load_checkpoint

from .helpers import BIN
from .test_sweeps import error_lines, hide_plugin

#: 100 real meta-steps, validated every 25 (the log line the test waits for) and saved only at the
#: end, so the one save in between is the one the signal makes. A few seconds per run.
RUN = (
    "trainer.max_steps=100",
    "trainer.meta_batch_size=4",
    "trainer.val_every=25",
    "trainer.val_tasks=8",
    "trainer.ckpt_every=1000",
    "trainer.log_every=25",
    "trainer.figures=false",
    "trainer.progress=false",
    "model.hidden_sizes=[16,16]",
)


def start(args: list[str], cwd: Path, name: str) -> subprocess.Popen:
    """``maml-train args`` in the background, its output in ``cwd/<name>.out``."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MAML_DEBUG")}
    with open(cwd / f"{name}.out", "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [str(BIN / "maml-train"), *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env
        )


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc): maml-train -> submitit's controller -> the job."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def job_process(pid: int) -> int:
    """The submitit job (``python -m submitit.core._submit``) that maml-train started."""
    for child in descendants(pid):
        try:
            if b"submitit.core._submit" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except OSError:
            continue
    raise AssertionError(f"no submitit job process under {pid}: {descendants(pid)}")


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text():
            return
        assert proc.poll() is None, f"maml-train ended (exit {proc.returncode}) before {text!r} in {path}"
        time.sleep(0.02)
    raise AssertionError(f"no {text!r} in {path} after {timeout} s")


def test_a_job_signalled_before_its_timeout_saves_is_requeued_and_resumes_exactly(tmp_path):
    sweep = start(["-m", "hydra/launcher=submitit_local", *RUN, "hydra.sweep.dir=sweep"], tmp_path, "sweep")
    plain = start([*RUN, "hydra.run.dir=plain"], tmp_path, "plain")  # the run nobody stops
    log = tmp_path / "sweep/0/train.log"
    # Training has begun (the trainer's handler is in place), well before its end at step 100:
    # send the signal submitit's controller (or SLURM) sends signal_delay_s before the time limit.
    wait_for(log, "step 25: val", sweep)
    os.kill(job_process(sweep.pid), signal.SIGUSR2)

    assert sweep.wait(timeout=300) == 0, (tmp_path / "sweep.out").read_text()
    assert plain.wait(timeout=300) == 0, (tmp_path / "plain.out").read_text()
    output = (tmp_path / "sweep.out").read_text()
    assert error_lines(output) == []  # and no traceback (error_lines checks)

    text = log.read_text()
    saved = [line for line in text.splitlines() if "SIGUSR2: stopped at step" in line]  # the trainer's save
    resumed = [line for line in text.splitlines() if "resumed from" in line]
    requeued = [line for line in text.splitlines() if "goes to submitit to requeue the job" in line]
    assert len(saved) == len(requeued) == len(resumed) == 1, text
    assert text.index(saved[0]) < text.index(requeued[0]) < text.index(resumed[0])  # saved, then requeued
    step = int(saved[0].split("stopped at step ")[1].split()[0])
    assert 25 <= step < 100, saved
    assert f"checkpoints/last.pt at step {step}" in resumed[0], resumed
    assert "done: step 100" in text
    assert "Requeued job" in text  # submitit's own line: its controller started the job again
    assert (tmp_path / "sweep/0/.hydra/overrides.yaml").read_text().rstrip().endswith("- trainer.resume=auto")

    stopped = load_checkpoint(tmp_path / "sweep/0/checkpoints/last.pt")
    never = load_checkpoint(tmp_path / "plain/checkpoints/last.pt")
    assert stopped["step"] == never["step"] == 100
    assert stopped["model"].keys() == never["model"].keys()
    for name, tensor in never["model"].items():
        assert torch.equal(stopped["model"][name], tensor), name


def test_a_job_out_of_requeues_saves_and_ends_with_one_line(tmp_path):
    # submitit counts a signal as a timeout after min(80%, all but 10 minutes) of timeout_min, so
    # with 10 minutes any signal is one (and the controller's own comes only after 9.5 minutes); no
    # timeout may be requeued: the job saves last.pt and the multirun ends with one line, exit 128+12.
    limits = ("hydra.launcher.timeout_min=10", "hydra.launcher.max_num_timeout=0")
    sweep = start(["-m", "hydra/launcher=submitit_local", *RUN, *limits, "hydra.sweep.dir=sweep"], tmp_path, "sweep")
    wait_for(tmp_path / "sweep/0/train.log", "step 25: val", sweep)
    os.kill(job_process(sweep.pid), signal.SIGUSR2)

    assert sweep.wait(timeout=300) == 128 + signal.SIGUSR2
    (line,) = error_lines((tmp_path / "sweep.out").read_text())
    job_dir = tmp_path / "sweep/0"
    assert line.startswith("error: SIGUSR2: stopped at step ") and line.endswith(
        f" and saved {job_dir}/checkpoints/last.pt; continue with maml-train hydra.run.dir={job_dir} "
        "trainer.resume=auto (Job not requeued because: timed-out too many times.)"
    ), line
    step = int(line.split("stopped at step ")[1].split()[0])
    assert load_checkpoint(job_dir / "checkpoints/last.pt")["step"] == step


def test_a_launcher_that_is_not_installed_names_the_extra(tmp_path):
    env = {**os.environ, **hide_plugin(tmp_path, "hydra_submitit_launcher")}
    env.pop("HYDRA_FULL_ERROR", None)
    probe = subprocess.run(
        [str(BIN / "python"), "-c", "import hydra_plugins.hydra_submitit_launcher"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert "No module named 'hydra_plugins.hydra_submitit_launcher'" in probe.stderr  # really gone

    proc = subprocess.run(
        [str(BIN / "maml-train"), "-m", "hydra/launcher=submitit_slurm", *RUN, "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert error_lines(proc.stderr) == [
        "error: hydra/launcher=submitit_slurm needs the submitit launcher (hydra-submitit-launcher), "
        "which is not installed: pip install 'maml-cli[sweep]'"
    ], proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr  # Hydra's plugin scan imported ours quietly
    assert not (tmp_path / "sweep").exists()


def test_a_misspelt_launcher_lists_the_ones_there_are(tmp_path):
    proc = subprocess.run(
        [str(BIN / "maml-train"), "-m", "hydra/launcher=submitit_slrum", *RUN],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert error_lines(proc.stderr) == [
        "error: In 'hydra/config': Could not find 'hydra/launcher/submitit_slrum' Available options in "
        "'hydra/launcher': basic joblib submitit_local submitit_slurm"
    ]
