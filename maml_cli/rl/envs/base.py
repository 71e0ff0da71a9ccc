"""What the RL room asks of an environment: many rollouts of many tasks, stepped together.

Every tensor has a leading ``[tasks, rollouts]`` pair of dimensions: task ``i`` of a batch has its
own goal, and its ``rollouts`` copies run side by side under the same goal. A rollout that is done
stays done (its later rewards are ignored through the ``done`` mask), so every rollout of a batch
takes exactly ``horizon`` steps and the arrays stay rectangular.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class TaskEnv(Protocol):
    #: Sizes of one observation and one action.
    observation_dim: int
    action_dim: int
    #: Steps of one rollout (the MAML paper: 100 for 2D navigation, 200 for HalfCheetah).
    horizon: int
    #: Size of one task's goal vector (nav2d: a 2D point; HalfCheetah: a velocity or a direction).
    goal_dim: int

    def sample_goals(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        """``[num_tasks, goal_dim]`` goals drawn from the task distribution with ``generator``
        (a CPU generator: the same goals on every device)."""

    def reset(self, goals: Tensor, rollouts: int, seed: int) -> Tensor:
        """Start ``rollouts`` episodes of each task (``goals`` is ``[tasks, goal_dim]``);
        ``seed`` fixes any randomness of the initial states. Returns observations
        ``[tasks, rollouts, observation_dim]`` (float32, on the environment's device)."""

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Apply ``actions`` ``[tasks, rollouts, action_dim]`` (the policy's raw sample: the
        environment clips it to its action space). Returns ``(observations, rewards, done)``:
        the next observations ``[tasks, rollouts, observation_dim]``, the rewards of this step
        ``[tasks, rollouts]`` (float32) and whether each episode has ended with this step
        ``[tasks, rollouts]`` (bool; once True it stays True, and the rewards after it are 0)."""
