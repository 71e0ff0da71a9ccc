"""Splitting names (classes of an image folder, tasks of a table) into train/val/test by ratios."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maml_cli.errors import ConfigError


def cut_by_ratios(names: Sequence[str], ratios: Sequence[float], split_seed: int) -> dict[str, list[str]]:
    """``names`` permuted with ``split_seed`` and cut in the proportions ``ratios`` (train, val,
    test). A split may come out empty: the caller says what that means for its data."""
    ratios = [float(r) for r in ratios]
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise ConfigError(
            f"dataset.split_ratios must be three fractions >= 0 (train, val, test), e.g. [0.64,0.16,0.2], got {ratios}"
        )
    total, count = sum(ratios), len(names)
    first, second = round(count * ratios[0] / total), round(count * (ratios[0] + ratios[1]) / total)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(int(split_seed))).tolist()
    shuffled = [names[i] for i in order]
    return {"train": shuffled[:first], "val": shuffled[first:second], "test": shuffled[second:]}
