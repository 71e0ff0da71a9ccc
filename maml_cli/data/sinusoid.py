"""Sinusoid regression, the toy problem of the MAML paper (Finn et al., 2017, Sec. 5.1).

Each task is ``y = A sin(w x - phi)`` with amplitude ``A ~ U[0.1, 5.0]``, phase ``phi ~ U[0, pi]``
and frequency ``w = 1``; inputs are ``x ~ U[-5, 5]`` and the loss is mean squared error. The
Meta-SGD paper (Li et al., 2017, Sec. 4.1) also draws ``w ~ U[0.8, 1.2]``: ``frequency=[0.8, 1.2]``.
Tasks are generated directly as tensors on the training device: there is no dataset to load,
so sampling a meta-batch is a handful of ``torch.rand`` calls. Validation and test tasks may have
other sizes than training tasks (``eval_shots``, ``eval_query``), as for the image datasets: the
MAML paper trains with K = 10 and reports K = 5, and validating as one tests picks the
checkpoint that adapts best under the test protocol.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from maml_cli.data.tasks import TaskBatch
from maml_cli.errors import ConfigError

# Held-out tasks come from generators seeded apart from the training stream, so validation and
# test tasks are fixed sets that never coincide with what the model trains on.
_SPLIT_SEEDS = {"val": 1_000_003, "test": 2_000_003}


class SinusoidTasks:
    """A distribution of sinusoid regression tasks with ``shots`` support and ``query`` query points."""

    metric_name = "mse"
    higher_is_better = False

    def __init__(
        self,
        shots: int = 10,
        query: int = 10,
        amplitude: Sequence[float] = (0.1, 5.0),
        phase: Sequence[float] = (0.0, math.pi),
        x_range: Sequence[float] = (-5.0, 5.0),
        frequency: Sequence[float] = (1.0, 1.0),
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        eval_shots: int | None = None,
        eval_query: int | None = None,
    ) -> None:
        named = (("amplitude", amplitude), ("phase", phase), ("x_range", x_range), ("frequency", frequency))
        for name, bounds in named:
            if len(bounds) != 2 or not bounds[0] <= bounds[1]:
                raise ConfigError(f"dataset.{name} must be [low, high] with low <= high, got {list(bounds)}")
        self.shots = shots
        self.query = query
        # Support and query sizes of the validation and test tasks (None: as in training).
        self.eval_shots = shots if eval_shots is None else int(eval_shots)
        self.eval_query = query if eval_query is None else int(eval_query)
        if self.eval_shots < 1 or self.eval_query < 1:
            raise ConfigError(
                "dataset.eval_shots and dataset.eval_query must be at least 1, "
                f"got {self.eval_shots} and {self.eval_query}"
            )
        self.amplitude = (float(amplitude[0]), float(amplitude[1]))
        self.phase = (float(phase[0]), float(phase[1]))
        self.x_range = (float(x_range[0]), float(x_range[1]))
        self.frequency = (float(frequency[0]), float(frequency[1]))
        self.seed = seed
        self.device = torch.device(device)
        self.dtype = dtype
        self.input_shape = (1,)

    # -- the task distribution interface -------------------------------------------------------

    def input_spec(self) -> dict:
        """What a deployed model needs to know of its inputs (kept in checkpoints)."""
        return {"problem": "regression", "input_shape": list(self.input_shape), "features": ["x"], "target": "y"}

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(prediction, target)

    def metric(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(prediction, target)

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        return self.episodes_for(*self.sample_task_parameters(num_tasks, generator), generator)

    def held_out(self, split: str, num_tasks: int, batch_size: int) -> Iterator[TaskBatch]:
        batch = self.fixed_tasks(split, num_tasks)
        for start in range(0, num_tasks, batch_size):
            yield batch.slice(start, start + batch_size)

    def fixed_tasks(self, split: str, num_tasks: int) -> TaskBatch:
        """All ``num_tasks`` held-out tasks of ``split`` at once (they are small), with
        ``eval_shots`` support and ``eval_query`` query points each."""
        generator = self.split_generator(split)
        parameters = self.sample_task_parameters(num_tasks, generator)
        return self.episodes_for(*parameters, generator, shots=self.eval_shots, query=self.eval_query)

    # -- pieces, public for figures and tests ----------------------------------------------------

    def split_generator(self, split: str) -> torch.Generator:
        """A generator for a held-out split, seeded from ``seed`` and the split name."""
        if split not in _SPLIT_SEEDS:
            raise ConfigError(f"unknown split {split!r}: use one of {sorted(_SPLIT_SEEDS)}")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.seed + _SPLIT_SEEDS[split])
        return generator

    def sample_task_parameters(self, num_tasks: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Amplitudes, phases and frequencies, each ``[num_tasks, 1, 1]``. A fixed frequency
        draws no random numbers, so the task stream is the same as before frequencies existed."""
        amplitude = self._uniform((num_tasks, 1, 1), self.amplitude, generator)
        phase = self._uniform((num_tasks, 1, 1), self.phase, generator)
        if self.frequency[0] == self.frequency[1]:
            frequency = torch.full_like(amplitude, self.frequency[0])
        else:
            frequency = self._uniform((num_tasks, 1, 1), self.frequency, generator)
        return amplitude, phase, frequency

    @staticmethod
    def curve(x: Tensor, amplitude: Tensor, phase: Tensor, frequency: Tensor) -> Tensor:
        return amplitude * torch.sin(frequency * x - phase)

    def episodes_for(
        self,
        amplitude: Tensor,
        phase: Tensor,
        frequency: Tensor,
        generator: torch.Generator,
        shots: int | None = None,
        query: int | None = None,
    ) -> TaskBatch:
        """Support and query points of the given tasks (``shots``/``query`` each; default: training's)."""
        shots = self.shots if shots is None else shots
        query = self.query if query is None else query
        num_tasks = amplitude.shape[0]
        x = self._uniform((num_tasks, shots + query, 1), self.x_range, generator)
        y = self.curve(x, amplitude, phase, frequency)
        return TaskBatch(
            support_x=x[:, :shots],
            support_y=y[:, :shots],
            query_x=x[:, shots:],
            query_y=y[:, shots:],
        )

    def _uniform(self, shape: tuple[int, ...], bounds: tuple[float, float], generator) -> Tensor:
        low, high = bounds
        u = torch.rand(shape, generator=generator, device=self.device, dtype=self.dtype)
        return u * (high - low) + low
