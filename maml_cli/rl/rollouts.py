"""Trajectories of a batch of tasks, and what the policy gradient needs of them.

Arrays are task-major, ``[tasks, rollouts, horizon, ...]``, so that the policy of each task (its
own adapted parameters) is applied under ``torch.func.vmap`` over the first dimension. ``mask`` is
1 for the steps an episode really took and 0 after it ended, so an episode that reached its goal
early contributes nothing afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from maml_cli.rl.envs.base import TaskEnv

#: ``policy(params, observations) -> (mean, std)`` for a batch of tasks: ``params`` has a leading
#: task dimension and ``observations`` is ``[tasks, n, observation_dim]``.
BatchedPolicy = Callable[[dict[str, Tensor], Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Episodes:
    """``rollouts`` episodes of each task: observations ``[T, R, H, obs]``, actions ``[T, R, H, act]``,
    rewards and mask ``[T, R, H]``."""

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor

    @property
    def num_tasks(self) -> int:
        return self.rewards.shape[0]

    def returns(self) -> Tensor:
        """The undiscounted return of each task averaged over its rollouts: ``[T]`` (what the
        paper's figures plot as "average return")."""
        return (self.rewards * self.mask).sum(dim=-1).mean(dim=-1)

    def flat(self) -> tuple[Tensor, Tensor]:
        """Observations and actions as ``[T, R * H, ...]`` (one policy call per task)."""
        tasks = self.num_tasks
        return self.observations.reshape(tasks, -1, self.observations.shape[-1]), self.actions.reshape(
            tasks, -1, self.actions.shape[-1]
        )


def collect(
    env: TaskEnv, goals: Tensor, policy: BatchedPolicy, params: dict[str, Tensor], rollouts: int, seed: int
) -> Episodes:
    """Run ``rollouts`` episodes of each task to the horizon with each task's ``params``.

    Task ``i``'s randomness (its action noise, and the environment's initial states) comes from
    the seed ``seed + i * rollouts`` alone, so a batch of episodes is a function of its seed and a
    task's episodes do not depend on which other tasks share its batch: validation scores the
    same episodes at every step, ``maml-eval`` the same whatever ``eval.batch_size``, and a
    resumed run collects what an uninterrupted one would have.
    """
    device = goals.device
    tasks = goals.shape[0]
    params = {k: v.detach() for k, v in params.items()}
    noise = []
    for i in range(tasks):  # one draw per task (not per step): cheap, and independent of batching
        generator = torch.Generator()
        generator.manual_seed(int(seed) + i * rollouts)
        noise.append(torch.randn(rollouts, env.horizon, env.action_dim, generator=generator))
    noise = torch.stack(noise).to(device)
    observation = env.reset(goals, rollouts, seed=int(seed)).to(device)
    observations, actions, rewards, masks = [], [], [], []
    done = torch.zeros(tasks, rollouts, dtype=torch.bool, device=device)
    with torch.no_grad():
        for t in range(env.horizon):
            mean, std = policy(params, observation)
            action = mean + std * noise[:, :, t]
            observations.append(observation)
            actions.append(action)
            masks.append((~done).float())
            observation, reward, done = env.step(action)
            observation, reward, done = observation.to(device), reward.to(device), done.to(device)
            rewards.append(reward.float())
    mask = torch.stack(masks, dim=2)
    return Episodes(
        observations=torch.stack(observations, dim=2),
        actions=torch.stack(actions, dim=2),
        rewards=torch.stack(rewards, dim=2) * mask,
        mask=mask,
    )


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """``G_t = r_t + gamma * G_{t+1}`` along the last dimension, zero past an episode's end."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = (rewards[..., t] + gamma * running) * mask[..., t]
        out[..., t] = running
    return out


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimates (Schulman et al., 2016) along the last dimension; with
    ``lam = 1`` (the MAML paper's code) they are the discounted returns minus the baseline."""
    values = values * mask
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    deltas = (rewards + gamma * next_values - values) * mask
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = (deltas[..., t] + gamma * lam * running) * mask[..., t]
        out[..., t] = running
    return out


def normalise_per_task(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Each task's advantages (over its valid steps) to mean 0 and standard deviation 1, as the
    paper's code does before every policy-gradient step."""
    dims = tuple(range(1, values.dim()))
    count = mask.sum(dim=dims, keepdim=True).clamp(min=1)
    mean = (values * mask).sum(dim=dims, keepdim=True) / count
    var = (((values - mean) * mask) ** 2).sum(dim=dims, keepdim=True) / count
    return (values - mean) / (var.sqrt() + eps) * mask
