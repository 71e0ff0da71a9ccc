"""The Gaussian MLP policy of MAML's RL experiments (Finn et al., 2017, Sec. 5.3).

An MLP maps an observation to the mean of a diagonal Gaussian over actions; the log standard
deviations are parameters of their own, independent of the observation, and are adapted by the
inner loop like every other weight (as in the paper's code and pytorch-maml-rl). The paper uses
two hidden layers of 100 ReLU units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class GaussianMLPPolicy(nn.Module):
    """``forward(observations) -> (mean, std)``, both shaped ``[..., action_dim]``.

    ``min_std`` bounds the standard deviation below, so that an inner step cannot collapse the
    distribution into a point (whose log-likelihoods would be infinite).
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (100, 100),
        init_std: float = 1.0,
        min_std: float = 1e-6,
    ) -> None:
        super().__init__()
        if init_std <= 0 or min_std <= 0:
            raise ValueError(f"init_std and min_std must be > 0, got {init_std} and {min_std}")
        layers: list[nn.Module] = []
        width = int(observation_dim)
        for size in hidden_sizes:
            layers += [nn.Linear(width, int(size)), nn.ReLU()]
            width = int(size)
        self.body = nn.Sequential(*layers)
        self.mean = nn.Linear(width, int(action_dim))
        self.log_std = nn.Parameter(torch.full((int(action_dim),), math.log(init_std)))
        self.min_log_std = math.log(min_std)
        self.observation_dim, self.action_dim = int(observation_dim), int(action_dim)

    def forward(self, observations: Tensor) -> tuple[Tensor, Tensor]:
        mean = self.mean(self.body(observations))
        std = self.log_std.clamp(min=self.min_log_std).exp().expand_as(mean)
        return mean, std
