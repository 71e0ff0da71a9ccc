"""ResNet-12, the deeper backbone of few-shot classification (Oreshkin et al., 2018; Lee et al., 2019).

Four residual blocks of three 3x3 convolutions each (with batch normalisation and leaky ReLU of
slope 0.1), a 1x1 convolution on the shortcut, and 2x2 max-pooling after each block; global
average pooling, then a linear head. Widths default to the common (64, 160, 320, 640). Batch
normalisation uses each task's own batch statistics (:class:`TaskBatchNorm2d`), as in Conv-4.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from maml_cli.models.layers import TaskBatchNorm2d


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers.append(nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False))
            layers.append(TaskBatchNorm2d(out_channels))
            if i < 2:
                layers.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), TaskBatchNorm2d(out_channels)
        )
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        out_features: int = 5,
        widths: Sequence[int] = (64, 160, 320, 640),
        image_size: int = 84,
    ) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"ResNet-12 has four blocks: give four widths, got {list(widths)}")
        if image_size < 16:
            raise ValueError(f"image_size={image_size} is too small for four 2x2 poolings (need >= 16)")
        channels = [in_channels, *widths]
        blocks = [ResidualBlock(channels[i], channels[i + 1]) for i in range(4)]
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(widths[-1], out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
