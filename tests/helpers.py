"""Shared helpers: composing configs in-process and running the installed CLIs as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from maml_cli.config import config_dir, register_configs
from maml_cli.data.tasks import TaskBatch

BIN = Path(sys.executable).parent


def compose_train(*overrides: str):
    """The composed ``maml-train`` config with ``overrides``, as Hydra builds it for a run."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def run_cli(command: str, *args: str, cwd: Path, timeout: float = 240, env=None) -> subprocess.CompletedProcess:
    """Run ``maml-train`` / ``maml-eval`` from the environment's bin dir, capturing output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.pop("MAML_DEBUG", None)
    return subprocess.run(
        [str(BIN / command), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


#: Overrides that make a real but tiny training run: every feature runs, in a second or two.
#: A sweep's job: three meta-steps, each validated and checkpointed (about a second each).
SWEEP_JOB = (
    "trainer.max_steps=3",
    "trainer.val_every=1",
    "trainer.val_tasks=5",
    "trainer.ckpt_every=1",
    "trainer.figures=false",
    "trainer.progress=false",
)


def real_data_root(name: str, locate) -> Path:
    """``$MAML_DATA_ROOT`` when ``locate`` finds the real dataset ``name`` under it. Without it,
    CI fails (``.ci/run`` provides the data) and a developer's run skips, saying how to run it."""
    import pytest

    root = os.environ.get("MAML_DATA_ROOT")
    if root is None or locate(Path(root)) is None:
        message = f"real {name} not found under MAML_DATA_ROOT={root!r}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must provide it: see .ci/run)")
        pytest.skip(message + "; set MAML_DATA_ROOT to run these tests")
    return Path(root)


TINY = (
    "trainer.max_steps=6",
    "trainer.meta_batch_size=4",
    "trainer.val_every=3",
    "trainer.val_tasks=8",
    "trainer.ckpt_every=3",
    "trainer.log_every=2",
    "inner_loop.eval_steps=2",
    "model.hidden_sizes=[16,16]",
)


def image_batch(tasks=3, ways=3, shots=2, query=3, size=16, channels=1, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    shape = (channels, size, size)
    labels = torch.arange(ways)
    return TaskBatch(
        torch.randn(tasks, ways * shots, *shape, generator=g, dtype=torch.float64),
        labels.repeat_interleave(shots).expand(tasks, -1),
        torch.randn(tasks, ways * query, *shape, generator=g, dtype=torch.float64),
        labels.repeat_interleave(query).expand(tasks, -1),
    )


class Tiny(nn.Module):
    """A 1-3-1 tanh network: smooth, so central differences are accurate."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(1, 3)
        self.out = nn.Linear(3, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


def write_untrained_checkpoint(path: Path, overrides, inputs: dict, shape) -> tuple[Path, nn.Module]:
    """A checkpoint as maml-train writes one, of the untrained model ``overrides`` describe (seed 0):
    what deployment reads, with no data and no training. Returns its path and the algorithm."""
    from omegaconf import OmegaConf

    from maml_cli.engine.build import build_algorithm, build_model
    from maml_cli.engine.checkpoint import FORMAT_VERSION, save_checkpoint

    cfg = compose_train(*overrides)
    torch.manual_seed(0)
    model = build_model(cfg, torch.device("cpu"), tuple(shape))
    algorithm = build_algorithm(cfg, model, torch.nn.functional.cross_entropy)
    state = {
        "format_version": FORMAT_VERSION,
        "step": 7,
        "model": algorithm.state_dict(),
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "inputs": inputs,
    }
    save_checkpoint(state, path)
    return Path(path), algorithm


def csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts by column name."""
    import csv

    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def one_error_line(capsys) -> str:
    """The one ``error:`` line a command printed on stderr, last; fails if there are others."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    return errors[0]
