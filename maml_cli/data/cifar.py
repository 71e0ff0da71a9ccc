"""Few-shot splits of CIFAR-100 (Krizhevsky, 2009), whose 100 fine classes of 600 32x32 images
are grouped into 20 superclasses of 5:

- CIFAR-FS (Bertinetto et al., 2019, "Meta-learning with differentiable closed-form solvers"):
  64 / 16 / 20 fine classes drawn at random;
- FC100 (Oreshkin et al., 2018, "TADAM: Task dependent adaptive metric for improved few-shot
  learning"): 12 / 4 / 4 superclasses, i.e. 60 / 20 / 20 fine classes, so that meta-test classes
  are semantically apart from meta-training ones.

Reads torchvision's layout, ``<root>/cifar-100-python/{train,test,meta}`` (or the same under
``<root>/cifar100/``): pickles with ``data`` (uint8 ``[N, 3072]``, channel-major), ``fine_labels``
and ``coarse_labels``, and ``meta`` with ``fine_label_names`` and ``coarse_label_names``, loaded
with a restricted unpickler. All 600 images of each class (train and test pooled) are used.
The split lists are JSON in ``split_dir`` (default ``<root>/cifar100/splits/{cifar-fs,fc100}``):
``[superclass, class]`` pairs for CIFAR-FS, superclass names for FC100. Both share one cache,
its classes named ``<superclass>/<class>``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from maml_cli.data.image_files import (
    CIFAR100_STATS,
    SPLITS,
    cache_file,
    check_image_options,
    data_root,
    few_shot_tasks,
    hwc_to_chw,
    not_found,
    pickled_fields,
    read_json_list,
    split_file,
)
from maml_cli.data.images import FewShotImageTasks, ImageCache
from maml_cli.errors import MamlError

FOLDER = "cifar-100-python"
PARTS = ("train", "test", "meta")


def candidates(root: Path) -> list[Path]:
    return [root / FOLDER, root / "cifar100" / FOLDER]


def locate(root: Path) -> Path | None:
    return next((f for f in candidates(root) if all((f / part).is_file() for part in PARTS)), None)


def decode(folder: Path, image_size: int, channels: int) -> ImageCache:
    meta = pickled_fields(folder / "meta", "CIFAR-100 meta", "fine_label_names", "coarse_label_names")
    fine_names, coarse_names = list(meta["fine_label_names"]), list(meta["coarse_label_names"])
    parts, fine, coarse = [], [], []
    for part in ("train", "test"):
        path = folder / part
        data = pickled_fields(path, "CIFAR-100", "data", "fine_labels", "coarse_labels")
        pixels = data["data"]
        if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.shape[1:] == (3072,)):
            raise MamlError(f"{path}: data must be a uint8 array [N, 3072]; re-download CIFAR-100")
        if not len(data["fine_labels"]) == len(data["coarse_labels"]) == len(pixels):
            raise MamlError(f"{path}: it has {len(pixels)} images but not as many labels; re-download CIFAR-100")
        parts.append(hwc_to_chw(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), image_size, channels))
        fine += [int(label) for label in data["fine_labels"]]
        coarse += [int(label) for label in data["coarse_labels"]]
    superclass: dict[int, int] = {}
    for f, c in zip(fine, coarse):
        if superclass.setdefault(f, c) != c:
            raise MamlError(f"CIFAR-100 at {folder}: class {fine_names[f]} is in two superclasses; re-download it")
    if sorted(superclass) != list(range(len(fine_names))):
        raise MamlError(f"CIFAR-100 at {folder} is incomplete: some classes have no images; re-download it")
    names = [f"{coarse_names[superclass[f]]}/{fine_names[f]}" for f in range(len(fine_names))]
    return ImageCache(torch.cat(parts), torch.tensor(fine), names)


def _download(root: Path) -> None:
    try:
        from torchvision.datasets import CIFAR100
    except ImportError:
        raise MamlError("dataset.download=true needs torchvision: pip install torchvision") from None
    try:
        CIFAR100(str(root), train=True, download=True)
    except (OSError, RuntimeError) as exc:
        raise MamlError(f"downloading CIFAR-100 into {root} failed: {exc}") from None


def _split_names(variant: str, split_dir: Path, class_names: list[str]) -> dict[str, list[str]]:
    """The ``<superclass>/<class>`` names of each split's classes, from the variant's JSON lists."""
    splits = {}
    for split in SPLITS:
        path = split_file(split_dir, split, ".json", variant)
        entries = read_json_list(path)
        if variant == "CIFAR-FS":
            if not all(isinstance(e, list) and len(e) == 2 for e in entries):
                raise MamlError(f"{path}: expected a list of [superclass, class] pairs")
            splits[split] = [f"{coarse}/{fine}" for coarse, fine in entries]
        else:
            if not all(isinstance(e, str) for e in entries):
                raise MamlError(f"{path}: expected a list of superclass names")
            splits[split] = [n for coarse in entries for n in class_names if n.startswith(f"{coarse}/")]
            unknown = [c for c in entries if not any(n.startswith(f"{c}/") for n in class_names)]
            if unknown:
                raise MamlError(f"{path} names superclass {unknown[0]!r}, which is not in CIFAR-100")
    return splits


def _tasks(
    variant: str,
    root: str | None = None,
    cache_dir: str | None = None,
    download: bool = False,
    split_dir: str | None = None,
    image_size: int = 32,
    channels: int = 3,
    **episodes,
) -> FewShotImageTasks:
    """CIFAR-FS or FC100; ``episodes`` are the episode keys (ways, shots, ..., seed, device)."""
    check_image_options(image_size, channels)
    base = data_root(root)
    folder = locate(base)
    if folder is None and download:
        _download(base)
        folder = locate(base)
    if folder is None:
        raise not_found(
            "CIFAR-100",
            candidates(base),
            "pass dataset.download=true (needs torchvision), or extract cifar-100-python.tar.gz "
            f"(https://www.cs.toronto.edu/~kriz/cifar.html) into {base}, or point dataset.root / MAML_DATA_ROOT "
            "at the folder that holds cifar-100-python/",
        )
    lists = Path(split_dir).expanduser() if split_dir else base / "cifar100" / "splits" / variant.lower()
    for split in SPLITS:  # the lists first: a missing one should not wait for the decoding
        split_file(lists, split, ".json", variant)
    cache_path = cache_file(cache_dir, "cifar100", image_size, channels)
    cache = ImageCache.load_or_build(cache_path, lambda: decode(folder, image_size, channels))
    splits = _split_names(variant, lists, cache.class_names)
    return few_shot_tasks(
        cache,
        splits,
        name=variant.lower().replace("-", "_"),
        stats=CIFAR100_STATS,
        channels=channels,
        where=folder,
        **episodes,
    )


def cifar_fs_tasks(**keys) -> FewShotImageTasks:
    """Build the CIFAR-FS task distribution; ``keys`` are the ``dataset`` config keys."""
    return _tasks("CIFAR-FS", **keys)


def fc100_tasks(**keys) -> FewShotImageTasks:
    """Build the FC100 task distribution; ``keys`` are the ``dataset`` config keys."""
    return _tasks("FC100", **keys)
