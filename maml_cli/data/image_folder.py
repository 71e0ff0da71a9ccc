"""Your own images: any folder with one sub-folder of images per class, ``<path>/<class>/<image>``
(torchvision's ImageFolder layout), meta-trained on with one override:
``maml-train dataset=image_folder dataset.path=/my/images``.

Classes are split into meta-training, validation and test classes by the first of these that is
set:

- ``train_classes`` / ``val_classes`` / ``test_classes``: lists of sub-folder names;
- ``split_dir``: ``train.txt`` / ``val.txt`` / ``test.txt``, one sub-folder name a line;
- ``split_ratios`` (default 0.64 / 0.16 / 0.20, the proportions of miniImageNet's split by Ravi &
  Larochelle, 2017): the sorted class names, permuted with ``split_seed``, cut in these proportions.

Images are converted to grayscale (``channels=1``) or RGB (``channels=3``) and resized to
``image_size``. The cache's name holds a hash of the folder's path and of its files' names, sizes
and modification times, so adding or changing images builds a new cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from maml_cli.data.image_files import (
    IMAGE_SUFFIXES,
    IMAGENET_STATS,
    SPLITS,
    cache_file,
    check_image_options,
    class_folders,
    decode_classes,
    few_shot_tasks,
    split_file,
)
from maml_cli.data.images import FewShotImageTasks, ImageCache
from maml_cli.data.splits import cut_by_ratios
from maml_cli.errors import ConfigError, MamlError


def ratio_split(names: Sequence[str], ratios: Sequence[float], split_seed: int) -> dict[str, list[str]]:
    """``names`` permuted with ``split_seed`` and cut in the proportions ``ratios``; no split empty."""
    splits = cut_by_ratios(names, ratios, split_seed)
    count, ratios = len(names), [float(r) for r in ratios]
    for split, classes in splits.items():
        if not classes:
            raise ConfigError(
                f"dataset.split_ratios={ratios} leave the {split} split of the {count} classes empty; "
                "change the ratios or add classes"
            )
    return splits


def _read_lines(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def choose_splits(names, train_classes, val_classes, test_classes, split_dir, split_ratios, split_seed):
    given = {"train": train_classes, "val": val_classes, "test": test_classes}
    if any(classes is not None for classes in given.values()):
        unset = [f"dataset.{split}_classes" for split, classes in given.items() if not classes]
        if unset:
            raise ConfigError(
                f"{', '.join(unset)} must be set too: list the classes of every split, or of none and "
                "let dataset.split_ratios split them"
            )
        return {split: [str(c) for c in classes] for split, classes in given.items()}
    if split_dir:
        folder = Path(split_dir).expanduser()
        return {split: _read_lines(split_file(folder, split, ".txt", "image_folder")) for split in SPLITS}
    return ratio_split(names, split_ratios, split_seed)


def _listing(classes: dict[str, list[Path]]) -> str:
    """Every file's name, size and modification time: what a cache of the folder depends on."""
    lines = []
    for name, files in classes.items():
        for file in files:
            stat = file.stat()
            lines.append(f"{name}/{file.name}\t{stat.st_size}\t{stat.st_mtime_ns}")
    return "\n".join(lines)


def image_folder_tasks(
    path: str | None = None,
    train_classes: Sequence[str] | None = None,
    val_classes: Sequence[str] | None = None,
    test_classes: Sequence[str] | None = None,
    split_dir: str | None = None,
    split_ratios: Sequence[float] = (0.64, 0.16, 0.20),
    split_seed: int = 0,
    root: str | None = None,
    cache_dir: str | None = None,
    download: bool = False,
    image_size: int = 84,
    channels: int = 3,
    **episodes,
) -> FewShotImageTasks:
    """Build tasks over the class folders in ``path``; the arguments are the ``dataset`` config keys
    (``root`` and ``download`` are not used: the images are where ``path`` says)."""
    check_image_options(image_size, channels)
    if not path:
        raise ConfigError(
            "dataset.path is not set: point it at a folder with one sub-folder of images per class, "
            "e.g. dataset=image_folder dataset.path=/my/images"
        )
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise MamlError(f"image folder {folder} not found; set dataset.path to a folder with one sub-folder per class")
    classes = class_folders(folder)
    if not classes:
        raise MamlError(
            f"no class folders with images in {folder}; put each class's images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
            "in a sub-folder of its own"
        )
    splits = choose_splits(list(classes), train_classes, val_classes, test_classes, split_dir, split_ratios, split_seed)
    for split, names in splits.items():
        unknown = [name for name in names if name not in classes]
        if unknown:
            raise MamlError(
                f"the {split} split names {unknown[0]!r}, which is not a folder of images in {folder}; "
                f"its classes are {', '.join(list(classes)[:10])}{', ...' if len(classes) > 10 else ''}"
            )
    cache_path = cache_file(cache_dir, "image_folder", image_size, channels, str(folder), _listing(classes))
    cache = ImageCache.load_or_build(cache_path, lambda: decode_classes(classes, image_size, channels))
    return few_shot_tasks(
        cache,
        splits,
        name="image_folder",
        stats=IMAGENET_STATS,
        channels=channels,
        where=folder,
        **episodes,
    )
