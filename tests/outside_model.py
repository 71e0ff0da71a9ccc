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


class UserNet(nn.Module):
    """The classifier most people write, with the normalisation layer ``norm`` of their choice:
    ``batch2d`` (Conv2d, nn.BatchNorm2d with its defaults, ReLU, MaxPool), ``group``, ``layer``,
    ``batch3d`` (a Conv3d over a depth of one) or ``batch1d`` (an MLP); an optional Dropout."""

    def __init__(self, in_channels=1, ways=3, hidden=4, image_size=8, norm="batch2d", dropout=0.0):
        super().__init__()
        self.norm = norm
        side = image_size // 2
        if norm == "batch1d":
            self.features = nn.Sequential(
                nn.Flatten(), nn.Linear(in_channels * image_size**2, hidden), nn.BatchNorm1d(hidden), nn.ReLU()
            )
            width = hidden
        elif norm == "batch3d":
            self.features = nn.Sequential(
                nn.Conv3d(in_channels, hidden, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(hidden), nn.ReLU()
            )
            width = hidden * image_size**2
        else:
            layer = {
                "batch2d": lambda: nn.BatchNorm2d(hidden),
                "group": lambda: nn.GroupNorm(2, hidden),
                "layer": lambda: nn.LayerNorm([hidden, image_size, image_size]),
            }[norm]()
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, hidden, 3, padding=1), layer, nn.ReLU(), nn.MaxPool2d(2)
            )
            width = hidden * side * side
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, ways)

    def forward(self, x):
        if self.norm == "batch3d":
            x = x.unsqueeze(2)  # [N, C, 1, H, W]
        return self.classifier(self.dropout(self.features(x).flatten(1)))
