"""Schemas of the ``dataset`` config group: one dataclass per task distribution.

Each YAML file in ``configs/dataset/`` names its schema in its ``defaults`` list (the keys of
``DATASET_SCHEMAS``), so its keys and types are checked at composition. ``_target_`` is the
function or class that builds the distribution; every other key is one of its arguments
(``seed`` and ``device`` are passed by the engine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import MISSING


@dataclass
class DatasetConfig:
    """Keys every task distribution has."""

    _target_: str = MISSING
    shots: int = 10  # support examples per task (per class, for classification)
    query: int = 10  # query examples per task (per class, for classification)


@dataclass
class SinusoidConfig(DatasetConfig):
    _target_: str = "maml_cli.data.sinusoid.SinusoidTasks"
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)


@dataclass
class ImageDatasetConfig(DatasetConfig):
    """N-way K-shot image classification (see :mod:`maml_cli.data.images`)."""

    ways: int = 5
    shots: int = 1
    query: int = 15
    eval_shots: int | None = None  # support per class at validation/test (None = shots)
    eval_query: int | None = None  # query per class at validation/test (None = query)
    root: str | None = None  # where the raw data is; None = $MAML_DATA_ROOT or ~/.cache/maml-cli/data
    cache_dir: str | None = None  # decoded tensors; None = $MAML_CACHE_DIR or ~/.cache/maml-cli/cache
    download: bool = False
    image_size: int = 28
    channels: int = 1


@dataclass
class OmniglotConfig(ImageDatasetConfig):
    _target_: str = "maml_cli.data.omniglot.omniglot_tasks"
    split: str = "maml"  # maml (seeded 1200/423 characters) or vinyals (the split lists)
    split_dir: str | None = None  # vinyals lists; None = <omniglot dir>/splits/vinyals
    split_seed: int = 0  # the maml split's permutation, apart from the run's seed
    val_characters: int = 100  # carved from the 1200 meta-training characters
    rotations: bool = True  # 90/180/270-degree turns as extra classes


DATASET_SCHEMAS: dict[str, type] = {
    "sinusoid_schema": SinusoidConfig,
    "omniglot_schema": OmniglotConfig,
}
