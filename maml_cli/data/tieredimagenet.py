"""tieredImageNet (Ren et al., 2018, "Meta-Learning for Semi-Supervised Few-Shot Classification"):
608 ImageNet classes grouped into 34 high-level categories, split by category so that meta-test
classes are far from meta-training ones: 351 / 97 / 160 classes (20 / 6 / 8 categories), 84x84.

Reads a folder ``<root>/tieredimagenet/{train,val,test}/<class>/<image>``: one sub-folder per class
in each split's folder, which defines the split. Classes are cached as ``<split>/<class>``.
Note the size: all 779,165 images at 84x84 RGB take 16.5 GB as one uint8 tensor.
"""

from __future__ import annotations

import logging
from pathlib import Path

from maml_cli.data.image_files import (
    IMAGENET_STATS,
    SPLITS,
    cache_file,
    check_image_options,
    class_folders,
    data_root,
    decode_classes,
    few_shot_tasks,
    not_found,
    splits_by_prefix,
)
from maml_cli.data.images import FewShotImageTasks, ImageCache
from maml_cli.errors import MamlError

log = logging.getLogger("maml_cli")

BENCHMARK_CLASSES = {"train": 351, "val": 97, "test": 160}


def decode(folder: Path, image_size: int, channels: int) -> ImageCache:
    classes = {}
    for split in SPLITS:
        found = class_folders(folder / split)
        if not found:
            raise MamlError(
                f"tieredImageNet at {folder} is incomplete: {folder / split} has no class folders with images"
            )
        if len(found) != BENCHMARK_CLASSES[split]:
            log.warning(
                "tieredImageNet %s has %d classes, the benchmark %d",
                folder / split,
                len(found),
                BENCHMARK_CLASSES[split],
            )
        classes.update({f"{split}/{name}": files for name, files in found.items()})
    return decode_classes(classes, image_size, channels)


def tieredimagenet_tasks(
    root: str | None = None,
    cache_dir: str | None = None,
    download: bool = False,
    image_size: int = 84,
    channels: int = 3,
    **episodes,
) -> FewShotImageTasks:
    """Build the tieredImageNet task distribution; the arguments are the ``dataset`` config keys
    (``episodes``: ways, shots, query, eval_shots, eval_query, seed, device)."""
    check_image_options(image_size, channels)
    folder = data_root(root) / "tieredimagenet"
    wanted = [folder / split for split in SPLITS]
    if not all(path.is_dir() for path in wanted):
        raise not_found(
            "tieredImageNet",
            wanted,
            "put its images there as <split>/<class>/<image>, or point dataset.root / MAML_DATA_ROOT at the "
            "folder holding tieredimagenet/ (it cannot be downloaded automatically)",
        )
    cache_path = cache_file(cache_dir, "tieredimagenet", image_size, channels)
    cache = ImageCache.load_or_build(cache_path, lambda: decode(folder, image_size, channels))
    return few_shot_tasks(
        cache,
        splits_by_prefix(cache.class_names),
        name="tieredimagenet",
        stats=IMAGENET_STATS,
        channels=channels,
        where=folder,
        **episodes,
    )
