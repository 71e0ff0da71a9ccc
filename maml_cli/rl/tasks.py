"""Reinforcement-learning tasks as the engine samples them.

A task is a goal; a batch of tasks is goals bound to an environment. Unlike a supervised
:class:`~maml_cli.data.tasks.TaskBatch`, a batch holds no data: its episodes depend on the policy
that collects them (the pre-update policy for the inner step, the adapted one for the outer
objective). So the batch offers :meth:`RLTaskBatch.rollouts`, which the algorithm calls with the
parameters it wants data of. Data still flow one way, environment -> rollouts -> algorithm ->
engine: the engine samples a batch and asks the algorithm for a meta-gradient, as for images.

Held-out tasks (validation, ``maml-eval``) are goals drawn from generators seeded by the run's
seed and the split, with fixed episode seeds, so every validation scores the same tasks and the
same action noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from maml_cli.errors import ConfigError
from maml_cli.rl.envs.base import TaskEnv
from maml_cli.rl.rollouts import BatchedPolicy, Episodes, collect

_SPLIT_SEEDS = {"val": 1_000_003, "test": 2_000_003}
#: Seeds of successive collection rounds of one batch lie this far apart (more tasks x rollouts
#: than any batch has), so no two rounds or tasks share a seed.
ROUND_SEED_STRIDE = 1_000_000_007


@dataclass
class RLTaskBatch:
    """``goals`` ``[T, goal_dim]`` of ``env``. ``seed`` fixes the episodes' randomness: task ``i``'s
    comes from ``seed + i * rollouts`` (see :func:`~maml_cli.rl.rollouts.collect`), and each
    collection round ``k`` of the algorithm (before adaptation, after one step...) shifts it by
    ``k`` times a large prime."""

    env: TaskEnv
    goals: Tensor
    rollouts: int
    seed: int

    @property
    def num_tasks(self) -> int:
        return self.goals.shape[0]

    def rollouts_of(self, policy: BatchedPolicy, params: dict[str, Tensor], round: int) -> Episodes:
        """``rollouts`` episodes of every task with the policy at ``params`` (one per task)."""
        return collect(self.env, self.goals, policy, params, self.rollouts, self.seed + ROUND_SEED_STRIDE * round)

    def slice(self, start: int, stop: int) -> RLTaskBatch:
        return RLTaskBatch(self.env, self.goals[start:stop], self.rollouts, self.seed + start * self.rollouts)


class RLTasks:
    """Goals of ``env`` and ``rollouts`` episodes per task and round (the paper's K = 20).

    ``observation_dim`` and ``action_dim`` are the config's statement of the environment's sizes
    (the policy is built from them); they are checked against the environment.
    """

    family = "rl"
    metric_name = "return"
    higher_is_better = True
    loss = None
    metric = None  # the return is measured by collecting episodes, not by a function of outputs

    def __init__(
        self, env: TaskEnv, rollouts: int, seed: int, device, observation_dim: int, action_dim: int, name: str
    ) -> None:
        if int(rollouts) < 1:
            raise ConfigError(f"dataset.rollouts must be an integer >= 1, got {rollouts!r}")
        for key, want, got in (
            ("observation_dim", env.observation_dim, observation_dim),
            ("action_dim", env.action_dim, action_dim),
        ):
            if int(got) != int(want):
                raise ConfigError(
                    f"dataset.{key} is {got} but {name}'s environment has {want}; leave dataset.{key} at {want}"
                )
        self.env = env
        self.rollouts = int(rollouts)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.name = name
        self.input_shape = (env.observation_dim,)
        # maml-eval reports episodes per task where supervised tasks report shots and queries.
        self.eval_shots = self.eval_query = self.rollouts

    def sample(self, num_tasks: int, generator: torch.Generator) -> RLTaskBatch:
        cpu = torch.Generator()
        seed = int(torch.randint(0, 2**40, (1,), generator=generator, device=generator.device).item())
        cpu.manual_seed(seed)
        return RLTaskBatch(self.env, self.env.sample_goals(num_tasks, cpu).to(self.device), self.rollouts, seed)

    def fixed_tasks(self, split: str, num_tasks: int) -> RLTaskBatch:
        if split not in _SPLIT_SEEDS:
            raise ConfigError(f"unknown split {split!r}: use one of {sorted(_SPLIT_SEEDS)}")
        generator = torch.Generator()
        generator.manual_seed(self.seed + _SPLIT_SEEDS[split])
        goals = self.env.sample_goals(num_tasks, generator).to(self.device)
        return RLTaskBatch(self.env, goals, self.rollouts, self.seed + _SPLIT_SEEDS[split])

    def held_out(self, split: str, num_tasks: int, batch_size: int) -> Iterator[RLTaskBatch]:
        batch = self.fixed_tasks(split, num_tasks)
        for start in range(0, num_tasks, batch_size):
            yield batch.slice(start, start + batch_size)


def nav2d_tasks(
    seed: int,
    device,
    rollouts: int = 20,
    horizon: int = 100,
    goal_range: tuple[float, float] = (-0.5, 0.5),
    max_action: float = 0.1,
    observation_dim: int = 2,
    action_dim: int = 2,
    shots: int | None = None,
    query: int | None = None,
) -> RLTasks:
    """``dataset=nav2d``: :class:`~maml_cli.rl.envs.nav2d.Nav2DEnv` tasks. ``shots`` and ``query``
    (every dataset's keys) do not apply: a task's data are ``rollouts`` episodes."""
    from maml_cli.rl.envs.nav2d import Nav2DEnv

    env = Nav2DEnv(horizon=horizon, goal_range=tuple(goal_range), max_action=max_action, device=device)
    return RLTasks(env, rollouts, seed, device, observation_dim, action_dim, "nav2d")


def halfcheetah_tasks(
    seed: int,
    device,
    task: str = "velocity",
    rollouts: int = 20,
    horizon: int = 200,
    observation_dim: int = 17,
    action_dim: int = 6,
    shots: int | None = None,
    query: int | None = None,
) -> RLTasks:
    """``dataset=halfcheetah_vel`` / ``halfcheetah_dir``: gymnasium's MuJoCo HalfCheetah with a
    goal velocity or direction (needs the ``[rl]`` extra)."""
    from maml_cli.rl.envs.halfcheetah import HalfCheetahEnv

    if task not in ("velocity", "direction"):
        raise ConfigError(f"dataset.task must be velocity or direction, got {task!r}")
    env = HalfCheetahEnv(task=task, horizon=horizon, device=device)
    name = "halfcheetah_vel" if task == "velocity" else "halfcheetah_dir"
    return RLTasks(env, rollouts, seed, device, observation_dim, action_dim, name)
