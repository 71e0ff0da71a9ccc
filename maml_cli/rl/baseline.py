"""The linear feature baseline of the MAML paper's RL code (from rllab), fitted per task.

A state's value is regressed, by ridge regression on each task's own fresh episodes, on the
features ``[o, o^2, t, t^2, t^3, 1]`` (``o`` the observation clipped to [-10, 10], ``t`` the step
index / 100). It is refitted on every batch of episodes, so it costs one small linear solve per
task and needs no training of its own. All tasks are solved at once, in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from maml_cli.rl.rollouts import Episodes, discounted_returns


def features(episodes: Episodes) -> Tensor:
    """``[T, R, H, 2 * obs + 4]``."""
    obs = episodes.observations.double().clamp(-10, 10)
    horizon = obs.shape[2]
    t = (torch.arange(horizon, device=obs.device, dtype=torch.float64) / 100.0).reshape(1, 1, horizon, 1)
    t = t.expand(*obs.shape[:3], 1)
    return torch.cat([obs, obs**2, t, t**2, t**3, torch.ones_like(t)], dim=-1)


def fit_and_predict(episodes: Episodes, gamma: float, reg: float = 1e-5) -> Tensor:
    """Each task's baseline values of its own episodes: ``[T, R, H]`` (zero past an episode's end).

    Like rllab, the ridge coefficient grows tenfold until the system is well conditioned.
    """
    x = features(episodes) * episodes.mask.unsqueeze(-1).double()
    y = discounted_returns(episodes.rewards.double(), episodes.mask.double(), gamma)
    tasks = x.shape[0]
    x2 = x.reshape(tasks, -1, x.shape[-1])
    xtx = x2.transpose(1, 2) @ x2
    xty = x2.transpose(1, 2) @ y.reshape(tasks, -1, 1)
    eye = torch.eye(xtx.shape[-1], dtype=xtx.dtype, device=xtx.device)
    for _ in range(5):
        weights = torch.linalg.solve(xtx + reg * eye, xty)
        if torch.isfinite(weights).all():
            break
        reg *= 10
    values = (x2 @ weights).reshape(y.shape)
    return (values * episodes.mask.double()).to(episodes.rewards.dtype)
