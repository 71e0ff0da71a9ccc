"""A model the toolkit has never seen: meta-trained by `_target_` alone (see test_trainer, test_cli)."""

import torch
from torch import nn


class SineNet(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.inp = nn.Linear(1, width)
        self.mix = nn.Parameter(torch.randn(width, width) / width**0.5)
        self.out = nn.Linear(width, 1)

    def forward(self, x):
        h = torch.sin(self.inp(x))
        return self.out(torch.tanh(h @ self.mix))
