"""What the trainer asks of "the other processes" of a run, and the answer when there are none.

The trainer calls these hooks at fixed points (placing the device, the meta-gradient, validation,
stopping, checkpoints' random streams). :class:`SingleProcess` leaves its work as it is;
:class:`maml_cli.distributed.ProcessGroupWorld` (torchrun) implements them with collectives. The
interface lives here, below the trainer, so that the engine never imports the distributed room.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class SingleProcess:
    """No other process: every hook leaves the trainer's work as it is."""

    rank = 0
    size = 1
    is_main = True

    def place(self, device: torch.device) -> torch.device:
        """The device this rank trains on, given ``trainer.device`` resolved."""
        return device

    @contextmanager
    def run_dir(self, path: str | Path, lock: Callable[[str | Path], AbstractContextManager]) -> Iterator[Path]:
        """The run dir every rank writes into (rank 0 alone does), locked for the job by rank 0."""
        with lock(path):
            yield Path(path)

    def seed(self, seed: int) -> None:
        """Called after the run is built (identical on every rank): give each rank its own random
        streams for what it draws alone (dropout masks...)."""

    def start(self, algorithm: nn.Module, step: int) -> None:
        """Called before training: check the ranks agree and start from rank 0's weights."""

    def meta_backward(self, algorithm, batch, step: int):
        """The meta-gradient of ``batch`` in ``.grad`` (the same on every rank); returns the
        algorithm's per-task losses of the whole batch."""
        return algorithm.meta_backward(batch, step=step)

    def score_tasks(self, algorithm, tasks, split: str, num_tasks: int, steps: int, batch_size: int) -> Tensor:
        """:func:`maml_cli.engine.evaluation.score_tasks`, shared out over the ranks."""
        from maml_cli.engine.evaluation import score_tasks

        return score_tasks(algorithm, tasks, split, num_tasks, steps=steps, batch_size=batch_size)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any."""
        return bool(flag)

    def agree_on_signal(self, signum: int | None) -> int | None:
        """The stop signal any rank received (the same on every rank), or None."""
        return signum

    def signals(self) -> AbstractContextManager:
        """Around the trainer's signal handlers: see :class:`ProcessGroupWorld`."""
        return ExitStack()

    def rng_state(self, states: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's random-number entries, from this rank's ``states``."""
        return {"rng": states}

    def restore_rng(self, state: dict[str, Any], task_generator: torch.Generator) -> None:
        from maml_cli.engine.rng import restore_rng_states

        restore_rng_states(state["rng"], task_generator)

    def describe(self) -> dict[str, Any]:
        """What ``metrics.json`` records of the world."""
        return {}


class NullWriter:
    """TensorBoard's writer for the ranks that write nothing."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def add_figure(self, *args, **kwargs) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
