"""CUB-200-2011 (Wah et al., 2011, "The Caltech-UCSD Birds-200-2011 Dataset"): 11,788 photos of
200 bird species, a fine-grained few-shot benchmark with the 100 / 50 / 50 class split of Hilliard
et al. (2018) used by Chen et al. (2019, "A Closer Look at Few-shot Classification").

Reads the extracted archive's images, ``<root>/cub/CUB_200_2011/images/<class folder>/*.jpg`` (or
``<root>/CUB_200_2011/images/``), and the split lists ``train.json``/``val.json``/``test.json``
(JSON lists of class folder names) in ``split_dir`` (default ``<root>/cub/splits``). Whole
images are resized, without cropping to the bounding boxes, to ``image_size`` (84 by default).
"""

from __future__ import annotations

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
    read_json_list,
    split_file,
)
from maml_cli.data.images import FewShotImageTasks, ImageCache
from maml_cli.errors import MamlError


def candidates(root: Path) -> list[Path]:
    return [root / "cub" / "CUB_200_2011" / "images", root / "CUB_200_2011" / "images"]


def read_splits(split_dir: Path) -> dict[str, list[str]]:
    splits = {}
    for split in SPLITS:
        path = split_file(split_dir, split, ".json", "CUB")
        names = read_json_list(path)
        if not all(isinstance(name, str) for name in names):
            raise MamlError(f"{path}: expected a list of class folder names")
        splits[split] = names
    return splits


def decode(images: Path, splits: dict[str, list[str]], image_size: int, channels: int) -> ImageCache:
    folders = class_folders(images)
    missing = [name for names in splits.values() for name in names if name not in folders]
    if missing:
        raise MamlError(
            f"CUB-200-2011 at {images} is incomplete: {len(missing)} classes of the split lists have no "
            f"images there (e.g. {missing[0]}); re-extract CUB_200_2011.tgz"
        )
    return decode_classes(folders, image_size, channels)


def cub_tasks(
    root: str | None = None,
    cache_dir: str | None = None,
    download: bool = False,
    split_dir: str | None = None,
    image_size: int = 84,
    channels: int = 3,
    **episodes,
) -> FewShotImageTasks:
    """Build the CUB task distribution; the arguments are the ``dataset`` config keys
    (``episodes``: ways, shots, query, eval_shots, eval_query, seed, device)."""
    check_image_options(image_size, channels)
    base = data_root(root)
    images = next((folder for folder in candidates(base) if folder.is_dir()), None)
    if images is None:
        raise not_found(
            "CUB-200-2011",
            candidates(base),
            "extract CUB_200_2011.tgz (https://www.vision.caltech.edu/datasets/cub_200_2011/) into "
            f"{base / 'cub'}, or point dataset.root / MAML_DATA_ROOT at the folder holding cub/ "
            "(it cannot be downloaded automatically)",
        )
    splits = read_splits(Path(split_dir).expanduser() if split_dir else base / "cub" / "splits")
    cache_path = cache_file(cache_dir, "cub", image_size, channels)
    cache = ImageCache.load_or_build(cache_path, lambda: decode(images, splits, image_size, channels))
    return few_shot_tasks(
        cache,
        splits,
        name="cub",
        stats=IMAGENET_STATS,
        channels=channels,
        where=images,
        **episodes,
    )
