"""2D point navigation (Finn et al., 2017, Sec. 5.3), every rollout of every task as one tensor.

A point starts at the origin and must reach a goal drawn uniformly from ``[-0.5, 0.5]^2``. An
action is a velocity, clipped to ``[-0.1, 0.1]`` per coordinate; the reward of a step is minus
the distance to the goal after the move; an episode ends when the point is within 0.01 of the
goal, or after ``horizon`` (100) steps. The paper's text says "negative squared distance"; its
released code (cbfinn/maml_rl, ``point_env_randgoal.py``) and pytorch-maml-rl both reward the
negative distance, which is what the paper's Figure 4 returns were measured with, so that is
what this environment does.

Every task of a meta-batch and every rollout of a task is stepped by one tensor operation: no
Python loop over episodes, on the CPU or a GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Nav2DEnv:
    """The batched point-navigation environment (see the module's docstring)."""

    observation_dim = 2
    action_dim = 2
    goal_dim = 2

    def __init__(
        self,
        horizon: int = 100,
        goal_range: tuple[float, float] = (-0.5, 0.5),
        max_action: float = 0.1,
        success_radius: float = 0.01,
        device: str | torch.device = "cpu",
    ) -> None:
        self.horizon = int(horizon)
        self.goal_range = (float(goal_range[0]), float(goal_range[1]))
        self.max_action = float(max_action)
        self.success_radius = float(success_radius)
        self.device = torch.device(device)
        self._position = self._goals = self._done = None
        self._t = 0

    def sample_goals(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        low, high = self.goal_range
        goals = torch.rand(num_tasks, 2, generator=generator, device=generator.device) * (high - low) + low
        return goals.to(self.device)

    def reset(self, goals: Tensor, rollouts: int, seed: int = 0) -> Tensor:
        """Every rollout starts at the origin: the seed changes nothing here."""
        tasks = goals.shape[0]
        self._goals = goals.to(self.device, torch.float32).reshape(tasks, 1, 2)
        self._position = torch.zeros(tasks, rollouts, 2, device=self.device)
        self._done = torch.zeros(tasks, rollouts, dtype=torch.bool, device=self.device)
        self._t = 0
        return self._position.clone()

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self._position is None:
            raise RuntimeError("call reset() before step()")
        running = ~self._done
        move = actions.to(self.device, torch.float32).clamp(-self.max_action, self.max_action)
        self._position = self._position + move * running.unsqueeze(-1)
        distance = (self._position - self._goals).norm(dim=-1)
        rewards = torch.where(running, -distance, torch.zeros_like(distance))
        self._t += 1
        self._done = self._done | (distance < self.success_radius)
        if self._t >= self.horizon:
            self._done = torch.ones_like(self._done)
        return self._position.clone(), rewards, self._done.clone()
