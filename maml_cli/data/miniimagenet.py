"""miniImageNet (Vinyals et al., 2016) with the split of Ravi & Larochelle (2017, "Optimization as
a Model for Few-Shot Learning"): 100 ImageNet classes of 600 images, 64 for meta-training, 16 for
validation and 20 for testing, at 84x84 as in the MAML paper (Finn et al., 2017, Sec. 5.2).

Reads, under ``<root>/miniimagenet/``, either of the two layouts it is passed around in:

- a folder of images, ``images/<filename>`` or ``images/<synset>/<filename>``, with the split
  CSVs ``train.csv``/``val.csv``/``test.csv`` (a ``filename,label`` header, then one image a
  line, label = ImageNet synset) in ``split_dir`` (default ``<root>/miniimagenet/splits/ravi``);
- the pickles ``mini-imagenet-cache-{train,val,test}.pkl``, dicts with ``image_data`` (uint8
  ``[N, 84, 84, 3]``) and ``class_dict`` (``{synset: [indices into image_data]}``), loaded with a
  restricted unpickler that admits numpy arrays and plain containers only.

The folder wins when both are there. Classes are cached as ``<split>/<synset>``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from maml_cli.data.image_files import (
    IMAGENET_STATS,
    SPLITS,
    cache_file,
    check_image_options,
    data_root,
    decode_files,
    few_shot_tasks,
    hwc_to_chw,
    not_found,
    pickled_fields,
    split_file,
    splits_by_prefix,
)
from maml_cli.data.images import FewShotImageTasks, ImageCache
from maml_cli.errors import MamlError

PICKLE = "mini-imagenet-cache-{}.pkl"


def read_split_csv(path: Path) -> list[tuple[str, str]]:
    """``(filename, synset)`` for each line of a Ravi split CSV."""
    rows = []
    with path.open(newline="", encoding="utf-8") as file:
        for row in csv.reader(file):
            if not row or row == ["filename", "label"]:
                continue
            if len(row) != 2:
                raise MamlError(f"{path}: expected lines 'filename,label', got {','.join(row)!r}")
            rows.append((row[0].strip(), row[1].strip()))
    return rows


def decode_folder(images: Path, lists: dict[str, list[tuple[str, str]]], image_size: int, channels: int) -> ImageCache:
    class_ids: dict[str, int] = {}
    files, labels, missing = [], [], []
    for split in SPLITS:
        for filename, synset in lists[split]:
            path = images / filename
            if not path.is_file():
                path = images / synset / filename
            if not path.is_file():
                missing.append(filename)
                continue
            files.append(path)
            labels.append(class_ids.setdefault(f"{split}/{synset}", len(class_ids)))
    if missing:
        total = sum(len(rows) for rows in lists.values())
        raise MamlError(
            f"miniImageNet at {images} is incomplete: {len(missing)} of the {total} images in the split lists "
            f"are missing (e.g. {missing[0]}); put them there as images/<filename> or images/<synset>/<filename>"
        )
    return decode_files(files, labels, list(class_ids), image_size, channels)


def decode_pickles(folder: Path, image_size: int, channels: int) -> ImageCache:
    class_ids: dict[str, int] = {}
    parts, labels = [], []
    for split in SPLITS:
        path = folder / PICKLE.format(split)
        data = pickled_fields(path, "miniImageNet", "image_data", "class_dict")
        images, class_dict = data["image_data"], data["class_dict"]
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4):
            raise MamlError(f"{path}: image_data must be a uint8 array [N, H, W, 3]")
        split_labels = np.full(len(images), -1)
        seen = np.zeros(len(images), dtype=np.int64)
        try:
            for synset, indices in dict(class_dict).items():
                index = np.asarray(indices, dtype=np.int64)
                if index.size and index.min() < 0:
                    raise IndexError(f"negative index {index.min()}")
                split_labels[index] = class_ids.setdefault(f"{split}/{synset}", len(class_ids))
                np.add.at(seen, index, 1)
        except (IndexError, TypeError, ValueError) as exc:
            raise MamlError(f"{path}: class_dict does not index image_data ({exc}); re-download the file") from None
        if not (seen == 1).all():
            raise MamlError(f"{path}: class_dict must give every image exactly one class; re-download the file")
        parts.append(hwc_to_chw(images, image_size, channels))
        labels.append(torch.from_numpy(split_labels))
        del data, images
    return ImageCache(torch.cat(parts), torch.cat(labels), list(class_ids))


def miniimagenet_tasks(
    root: str | None = None,
    cache_dir: str | None = None,
    download: bool = False,
    split_dir: str | None = None,
    image_size: int = 84,
    channels: int = 3,
    **episodes,
) -> FewShotImageTasks:
    """Build the miniImageNet task distribution; the arguments are the ``dataset`` config keys
    (``episodes``: ways, shots, query, eval_shots, eval_query, seed, device)."""
    check_image_options(image_size, channels)
    folder = data_root(root) / "miniimagenet"
    images = folder / "images"
    pickles = [folder / PICKLE.format(split) for split in SPLITS]
    if images.is_dir():
        lists_dir = Path(split_dir).expanduser() if split_dir else folder / "splits" / "ravi"
        paths = [split_file(lists_dir, split, ".csv", "miniImageNet") for split in SPLITS]
        lists = {split: read_split_csv(path) for split, path in zip(SPLITS, paths)}
        content = [path.read_text(encoding="utf-8") for path in paths]
        cache_path = cache_file(cache_dir, "miniimagenet", image_size, channels, *content)
        cache = ImageCache.load_or_build(cache_path, lambda: decode_folder(images, lists, image_size, channels))
    elif all(path.is_file() for path in pickles):
        cache_path = cache_file(cache_dir, "miniimagenet_pickles", image_size, channels)
        cache = ImageCache.load_or_build(cache_path, lambda: decode_pickles(folder, image_size, channels))
    else:
        raise not_found(
            "miniImageNet",
            [images, folder / PICKLE.format("{train,val,test}")],
            "put the 84x84 images in images/ (with the Ravi split CSVs in dataset.split_dir) or the three "
            "mini-imagenet-cache-*.pkl files there, or point dataset.root / MAML_DATA_ROOT at the folder "
            "holding miniimagenet/ (it cannot be downloaded automatically)",
        )
    return few_shot_tasks(
        cache,
        splits_by_prefix(cache.class_names),
        name="miniimagenet",
        stats=IMAGENET_STATS,
        channels=channels,
        where=folder,
        **episodes,
    )
