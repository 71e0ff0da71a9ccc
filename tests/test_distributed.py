"""Data-parallel meta-training under torchrun (gloo, 2 processes on this machine's CPU).

- Two ranks, each adapting half of the meta-batch, end where one process with the whole
  meta-batch ends, for every algorithm (and a Conv-4, MAML++'s per-step batch norms, and a user's
  batch-norm model with ``model.batch_norm=running``): the whole parameter vector to 1e-6 relative
  in float32 after 3 steps. Measured: at most 2.4e-8 (Conv-4; 2e-9 or less on the sinusoid; Reptile
  bit for bit); per tensor at most 7.8e-8 on the sinusoid and 1.3e-6 on the images (a MAML++ learned
  inner rate of 0.007 that moved by 0.008); running statistics 2.1e-7.
- A SIGTERM to torchrun stops every rank at one step and saves once; ``maml-train`` under torchrun
  writes one run dir (rank 0's), and the stopped run resumed under torchrun ends bit for bit where
  a run trained straight through ends.
- A rank killed with SIGKILL ends the job with one clear line from the survivor; a meta-batch the
  ranks cannot share is one line, exit 1.
- Batch-norm running statistics of two ranks combine into what one process's updates give.

Everything runs with ``python -m torch.distributed.run`` of this environment (``torchrun``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from maml_cli.engine import Trainer
from maml_cli.engine.checkpoint import load_checkpoint

from .helpers import BIN, compose_train

REPO = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
QUIET = ("trainer.progress=false", "trainer.figures=false")

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo"
)

#: A few real meta-steps; validation at the end only, on 5 tasks: 3 for rank 0, 2 for rank 1.
STEPS = (
    "trainer.max_steps=3",
    "trainer.meta_batch_size=4",
    "trainer.val_every=1000",
    "trainer.val_tasks=5",
    "trainer.ckpt_every=1000",
    "inner_loop.eval_steps=1",
    *QUIET,
)
SINE = (*STEPS, "model.hidden_sizes=[16,16]")
ALGORITHMS = {
    "maml": ("inner_loop=maml",),
    "fomaml": ("inner_loop=fomaml",),
    "anil": ("inner_loop=anil",),
    "metasgd": ("inner_loop=metasgd",),
    "mamlpp": ("inner_loop=mamlpp", "inner_loop.steps=2", "inner_loop.first_order_steps=0"),
    "reptile": ("inner_loop=reptile",),
    "imaml": ("inner_loop=imaml",),
}
#: The ``maml-train`` run that SIGTERM stops and the resume test resumes (a constant learning rate:
#: ``max_steps`` changes nothing before the last step).
RESUMED = (
    "trainer.meta_batch_size=4",
    "trainer.val_every=3",
    "trainer.val_tasks=4",
    "trainer.ckpt_every=3",
    "trainer.log_every=2",
    "inner_loop.eval_steps=1",
    "model.hidden_sizes=[16,16]",
    *QUIET,
)


def image_cases(root: Path) -> dict[str, tuple[str, ...]]:
    """Conv-4, MAML++ with per-step batch norms, and a user's model whose nn.BatchNorm2d keeps
    running statistics, on tiny images. Plain SGD: a conv bias before a batch norm has a gradient
    of exactly zero, computed as rounding noise, which Adam's first step (~ lr * sign) would turn
    into differences of lr between any two summation orders, one process's included."""
    from .fixtures_images import image_folder

    image_folder(root / "images")
    data = (
        "dataset=image_folder",
        f"dataset.path={root / 'images'}",
        f"dataset.cache_dir={root / 'cache'}",
        "dataset.split_ratios=[0.5,0.25,0.25]",
        "dataset.ways=2",
        "dataset.shots=1",
        "dataset.query=2",
        "dataset.image_size=16",
        "model=conv4",
        "model.hidden=4",
        "optimizer=sgd",
        "optimizer.lr=0.01",
        *STEPS,
    )
    user = ("model._target_=tests.outside_model.UserNet", "~model.out_features", "+model.ways=${dataset.ways}")
    return {
        "conv4": ("inner_loop=maml", *data),
        "mamlpp_conv": ("inner_loop=mamlpp", "inner_loop.steps=2", "inner_loop.first_order_steps=0", *data),
        "bn_running": ("inner_loop=maml", *data, *user, "model.batch_norm=running"),
    }


def torchrun(*args: str, cwd: Path, timeout: float = 240, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    for key in ("HYDRA_FULL_ERROR", "MAML_DEBUG", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if popen:
        return subprocess.Popen([*TORCHRUN, *args], cwd=cwd, env=env, text=True, **popen)
    return subprocess.run([*TORCHRUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def maml_train(*overrides: str, cwd: Path, **kwargs):
    return torchrun(str(BIN / "maml-train"), *overrides, cwd=cwd, **kwargs)


def our_errors(stderr: str) -> list[str]:
    """The ``error:`` lines the ranks printed (torchrun adds its own report of a failed worker)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A ``maml-train`` job of 2 ranks stopped by a SIGTERM to torchrun: (cwd, step, stderr, exit)."""
    root = tmp_path_factory.mktemp("stopped")
    # Stopped mid-training after its first validation (step 3's best.pt, then step 4's last.pt), so that
    # metrics.json has a result to record and the signal does not land in the validation's own writes.
    launcher = _started(root, *RESUMED, "trainer.ckpt_every=2", ready=_validated_and_trained_on)
    launcher.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
    _, stderr = launcher.communicate(timeout=120)
    errors = our_errors(stderr)
    assert len(errors) == 1 and errors[0].startswith("error: SIGTERM: stopped at step "), stderr[-3000:]
    return root, int(errors[0].split("stopped at step ")[1].split()[0]), stderr, launcher.returncode


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, stopped):
    """One torchrun job of 2 ranks that trains every case (a process joins its ranks once), and
    the stopped run straight through to 3 steps past where it stopped."""
    root = tmp_path_factory.mktemp("ranks")
    cases = {name: (*extra, *SINE) for name, extra in ALGORITHMS.items()}
    cases |= image_cases(root)
    cases["straight"] = (*RESUMED, f"trainer.max_steps={stopped[1] + 3}")
    (root / "cases.json").write_text(json.dumps(cases))
    proc = torchrun("-m", "tests.distributed_job", str(root / "out"), str(root / "cases.json"), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, cases


def relative_differences(ours: dict, one_process: dict) -> tuple[float, float, float]:
    """(whole parameter vector, worst parameter tensor, worst floating buffer), relative in float64;
    integer buffers must be equal."""
    params, buffers, worst = [], 0.0, 0.0
    for name, want in one_process.items():
        got = ours[name]
        if not want.is_floating_point():
            assert torch.equal(got, want), name
            continue
        diff = (got.double() - want.double()).norm().item()
        rel = diff / max(want.double().norm().item(), 1e-30)
        if "running_" in name:
            buffers = max(buffers, rel)
        else:
            params.append((diff**2, want.double().norm().item() ** 2))
            worst = max(worst, rel)
    whole = (sum(d for d, _ in params) / sum(n for _, n in params)) ** 0.5
    return whole, worst, buffers


@pytest.mark.parametrize("case", [*ALGORITHMS, "conv4", "mamlpp_conv", "bn_running"])
def test_two_ranks_end_where_one_process_with_the_whole_meta_batch_ends(two_ranks, case):
    root, cases = two_ranks
    single = Trainer(compose_train(*cases[case]), root / "one" / case)
    single.fit()
    ours = load_checkpoint(root / "out" / case / "checkpoints/last.pt")
    assert ours["step"] == single.step == 3
    whole, worst, buffers = relative_differences(ours["model"], single.algorithm.state_dict())
    print(f"{case}: parameters {whole:.2g} relative (worst tensor {worst:.2g}), running statistics {buffers:.2g}")
    assert whole <= 1e-6, (whole, worst)
    assert buffers <= 1e-6, buffers
    # Validation shared out over the ranks (unevenly: 5 tasks) scores what one process scores.
    assert ours["last_val"]["value"] == pytest.approx(single.last_val["value"], rel=1e-5, abs=1e-7)
    if case == "bn_running":  # the ranks' running statistics were combined, not left at their init
        running_var = ours["model"]["model.features.1.running_var"]
        assert not torch.equal(running_var, torch.ones_like(running_var))
        assert int(ours["model"]["model.features.1.num_batches_tracked"]) == 3 * 4  # one per task
    assert len(ours["rank_rng"]) == 2 and ours["rng"] is not None


def test_sigterm_to_torchrun_stops_every_rank_at_one_step_and_saves_once(stopped):
    cwd, step, stderr, _ = stopped
    assert step > 0
    saved = load_checkpoint(cwd / "run/checkpoints/last.pt")
    assert saved["step"] == step and len(saved["rank_rng"]) == 2  # every rank's streams, at that step
    assert "Traceback" not in stderr.split("error: SIGTERM")[0]  # no rank's (torchrun then reports its signal)
    metrics = json.loads((cwd / "run/metrics.json").read_text())
    assert metrics["interrupted_at_step"] == step and metrics["world_size"] == 2


def test_maml_train_under_torchrun_writes_one_run_dir_and_resumes_bit_for_bit(stopped, two_ranks):
    cwd, step, _, _ = stopped
    root, _ = two_ranks
    resumed = maml_train(*RESUMED, f"trainer.max_steps={step + 3}", "trainer.resume=auto", "hydra.run.dir=run", cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert our_errors(resumed.stderr) == []

    # One run dir, written by rank 0 alone: no dir of a follower's own ${now:}, one log, one record.
    assert sorted(p.name for p in cwd.iterdir()) == ["run"]
    assert len(list((cwd / "run/.hydra/resumed").iterdir())) == 1
    metrics = json.loads((cwd / "run/metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == step + 3
    log = (cwd / "run/train.log").read_text()
    assert log.count("data-parallel: 2 ranks (gloo on cpu), 2 tasks each") == 2  # rank 0's, once per segment

    final = load_checkpoint(cwd / "run/checkpoints/last.pt")
    straight = load_checkpoint(root / "out/straight/checkpoints/last.pt")  # in one go, 2 ranks
    assert final["step"] == straight["step"] == step + 3
    for name, value in straight["model"].items():
        assert torch.equal(final["model"][name], value), name
    for mine, theirs in zip(final["rank_rng"], straight["rank_rng"]):
        assert torch.equal(mine["tasks"], theirs["tasks"]) and torch.equal(mine["torch"], theirs["torch"])


def _workers(launcher: subprocess.Popen) -> dict[int, int]:
    """RANK -> pid of torchrun's worker processes (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent != launcher.pid:
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


def _validated_and_trained_on(checkpoints: Path) -> bool:
    """A best.pt, and a last.pt written after it."""
    best, last = checkpoints / "best.pt", checkpoints / "last.pt"
    try:
        return best.stat().st_mtime_ns < last.stat().st_mtime_ns
    except FileNotFoundError:
        return False


def _started(tmp_path: Path, *overrides: str, ready=lambda checkpoints: (checkpoints / "last.pt").exists()):
    """A long ``maml-train`` job of 2 ranks in ``tmp_path/run``, returned once it has trained a few
    steps (``ready(checkpoints dir)``; by default once last.pt exists)."""
    launcher = maml_train(
        "trainer.meta_batch_size=4",
        "trainer.val_every=100000",
        "trainer.ckpt_every=5",
        "model.hidden_sizes=[16,16]",
        *QUIET,
        *overrides,
        "trainer.max_steps=100000",
        "hydra.run.dir=run",
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 180
    while not ready(tmp_path / "run/checkpoints"):
        if launcher.poll() is not None or time.time() > deadline:
            launcher.kill()
            pytest.fail(f"the job did not start: {launcher.communicate()[1][-3000:]}")
        time.sleep(0.1)
    return launcher


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks' pids in /proc")
def test_a_killed_rank_ends_the_job_with_one_clear_line(tmp_path):
    launcher = _started(tmp_path, "trainer.distributed_timeout_s=20")
    ranks = _workers(launcher)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGKILL)
    killed = time.time()
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert time.time() - killed < 60, "the survivor should fail fast (gloo sees the peer's socket close)"
    errors = our_errors(stderr)
    assert len(errors) == 1, stderr[-3000:]
    assert errors[0].startswith("error: rank 0 of 2 lost the other ranks in "), errors
    assert "trainer.distributed_timeout_s=20" in errors[0]


def test_a_meta_batch_the_ranks_cannot_share_is_one_line(tmp_path):
    """Checked before the ranks join, so the two ranks run here as torchrun starts them (its
    environment), without the launcher: rank 0 prints one line, rank 1 nothing, both exit 1."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    env.pop("HYDRA_FULL_ERROR", None)
    args = [str(BIN / "maml-train"), "trainer.meta_batch_size=5", "trainer.max_steps=2", *QUIET]
    ranks = [
        subprocess.Popen(
            [*args, *(["hydra.run.dir=run"] if rank == 0 else [])],
            cwd=tmp_path,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    (_, rank0), (_, rank1) = (proc.communicate(timeout=240) for proc in ranks)
    assert [proc.returncode for proc in ranks] == [1, 1]
    assert rank0.strip().splitlines() == [
        "error: trainer.meta_batch_size=5 does not divide by the 2 ranks of this torchrun job: each rank adapts "
        "an equal share of the meta-batch; use a multiple of 2 (e.g. trainer.meta_batch_size=6) or another "
        "number of processes"
    ]
    assert rank1.strip() == ""
    assert not (tmp_path / "run/checkpoints").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # rank 1 made no dir of its own


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_batch_norm_statistics_of_two_ranks_combine_into_one_process_updates(momentum):
    """Each rank takes one momentum step per task of its half; combined, the statistics are those
    of one process taking the steps task after task (float64 here: exact up to rounding)."""
    import copy

    from torch import nn

    from maml_cli.distributed.buffers import BufferSync
    from maml_cli.models.batch_norm import prepare_batch_norms, update_running_stats

    torch.manual_seed(0)
    one = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5, momentum=momentum)).double()
    layers = prepare_batch_norms(one, "running")
    update_running_stats(layers, one, [torch.randn(6, 3, dtype=torch.float64) for _ in range(3)])  # a history
    ranks = [copy.deepcopy(one) for _ in range(2)]
    tasks = [torch.randn(6, 3, dtype=torch.float64) * (t + 1) + t for t in range(4)]

    update_running_stats(layers, one, tasks)
    syncs = [BufferSync(model, rank, 2) for rank, model in enumerate(ranks)]
    for rank, (model, sync) in enumerate(zip(ranks, syncs)):
        sync.snapshot()
        update_running_stats(prepare_batch_norms(model, "running"), model, tasks[2 * rank : 2 * rank + 2])
    sums = [a + b for a, b in zip(*(sync.contribute() for sync in syncs))]
    for model, sync in zip(ranks, syncs):
        sync.apply(sums)
        for (name, want), got in zip(one.named_buffers(), model.buffers()):
            assert torch.allclose(got.double(), want.double(), rtol=1e-12, atol=1e-12), name
        assert int(model[1].num_batches_tracked) == 3 + 4
