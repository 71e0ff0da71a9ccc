"""What the image datasets share: decoding image files or arrays into an :class:`ImageCache`,
loading the numpy pickles datasets are distributed as without running code from them, reading
split lists, and standardisation statistics.

Every image is treated alike: converted to grayscale (``channels=1``) or RGB (``channels=3``),
resized with bilinear filtering to ``image_size`` x ``image_size``, stored as uint8 CHW. Files are
decoded by PIL, which decodes a JPEG at a fraction of its size when that is still at least
``image_size`` (measured faster than torchvision.io here: ``scripts/bench_cache_build.py``); arrays
are resized by tensor operations, many images at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import struct
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from maml_cli.data.images import FewShotImageTasks, ImageCache, SplitClasses, default_cache_dir, default_data_root
from maml_cli.errors import ConfigError, MamlError

log = logging.getLogger("maml_cli")

SPLITS = ("train", "val", "test")
#: Per-channel mean and std of ImageNet's training images, as torchvision's pretrained models use.
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: Per-channel mean and std of CIFAR-100's 50,000 training images.
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})


# -- options, paths, caches ----------------------------------------------------------------------


def check_image_options(image_size: int, channels: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"dataset.image_size must be an integer >= 1, got {image_size!r}")
    if channels not in (1, 3):
        raise ConfigError(f"dataset.channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")


def data_root(root: str | None) -> Path:
    return Path(root).expanduser() if root else default_data_root()


def digest(*parts: str) -> str:
    """A short stable hash of ``parts``, to tell caches of different contents apart by name."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:12]


def cache_file(cache_dir: str | None, dataset: str, image_size: int, channels: int, *content: str) -> Path:
    """``<cache_dir>/<dataset>[_<hash of content>]_<size>px_<channels>ch.pt``."""
    tag = f"_{digest(*content)}" if content else ""
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return folder / f"{dataset}{tag}_{image_size}px_{channels}ch.pt"


def not_found(what: str, looked: Iterable[Path], how: str) -> MamlError:
    places = ", ".join(str(p) for p in looked)
    return MamlError(f"{what} not found (looked in {places}); {how}")


def standardisation(stats, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel; a grayscale image gets the average of the RGB statistics."""
    mean, std = stats
    if channels == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return tuple(mean), tuple(std)


# -- decoding ------------------------------------------------------------------------------------


def resize(images: Tensor, image_size: int) -> Tensor:
    """uint8 ``[N, C, H, W]`` resized to ``image_size`` x ``image_size`` in one tensor operation:
    bilinear, antialiased when shrinking, as PIL's ``BILINEAR`` resize (within one or two levels)."""
    if images.shape[-2:] == (image_size, image_size):
        return images
    return F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)


def to_channels(images: Tensor, channels: int) -> Tensor:
    """uint8 ``[N, 1 or 3, H, W]`` with ``channels`` channels: grey as PIL's ``convert("L")`` computes
    it (ITU-R 601-2 luma in 16-bit fixed point), colour from grey as the grey three times."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1)
    red, green, blue = (channel.int() for channel in images.unbind(1))
    return ((19595 * red + 38470 * green + 7471 * blue + 0x8000) >> 16).to(torch.uint8)[:, None]


def _to_chw(image, image_size: int, channels: int) -> Tensor:
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    image.draft(mode, (image_size, image_size))  # JPEG: the decoder shrinks by a power of 2 first
    small = image.convert(mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
    pixels = torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8)
    return pixels.reshape(image_size, image_size, channels).permute(2, 0, 1)


def _decode_file(path: Path, image_size: int, channels: int) -> Tensor:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return _to_chw(image, image_size, channels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MamlError(f"image {path} is too large to decode safely ({exc}); shrink or remove the file") from None
    # PIL's UnidentifiedImageError is an OSError; a PNG with a broken chunk raises SyntaxError,
    # a truncated header struct.error or EOFError.
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise MamlError(f"cannot decode image {path}: {exc}; replace or remove the file") from None


def decode_files(
    files: Sequence[Path], labels: Sequence[int], class_names: Sequence[str], image_size: int, channels: int
) -> ImageCache:
    """Decode ``files`` (PIL releases the GIL, so threads share the work) into one cache."""
    images = torch.empty((len(files), channels, image_size, image_size), dtype=torch.uint8)
    from PIL import Image

    pool = ThreadPoolExecutor(min(8, os.cpu_count() or 1))
    # PIL only warns, without naming the file, about an image of more than MAX_IMAGE_PIXELS pixels:
    # as an error it names it. Set here, around all the workers, as warning filters are global.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            for i, chw in enumerate(pool.map(lambda path: _decode_file(path, image_size, channels), files)):
                images[i] = chw
        finally:
            pool.shutdown(cancel_futures=True)
    return ImageCache(images, torch.as_tensor(list(labels), dtype=torch.long), list(class_names))


def decode_classes(classes: Mapping[str, Sequence[Path]], image_size: int, channels: int) -> ImageCache:
    """Decode ``{class name: its image files}``; labels follow the mapping's order."""
    files, labels = [], []
    for label, paths in enumerate(classes.values()):
        files += paths
        labels += [label] * len(paths)
    return decode_files(files, labels, list(classes), image_size, channels)


def hwc_to_chw(array: np.ndarray, image_size: int, channels: int, chunk: int = 1024) -> Tensor:
    """uint8 images ``[N, H, W, C]`` (C = 1 or 3) as uint8 ``[N, channels, image_size, image_size]``,
    ``chunk`` images per tensor operation (4x faster than PIL image by image: scripts/bench_cache_build.py).
    Grey is taken at the smaller size, before enlarging or after shrinking."""
    count, height, width, source_channels = array.shape
    if (height, width, source_channels) == (image_size, image_size, channels):
        return torch.from_numpy(np.array(array.transpose(0, 3, 1, 2), order="C", copy=True))
    out = torch.empty((count, channels, image_size, image_size), dtype=torch.uint8)
    grey_first = image_size * image_size >= height * width
    for start in range(0, count, chunk):
        part = torch.from_numpy(np.ascontiguousarray(array[start : start + chunk])).permute(0, 3, 1, 2)
        if grey_first:
            out[start : start + chunk] = resize(to_channels(part, channels), image_size)
        else:
            out[start : start + chunk] = to_channels(resize(part, image_size), channels)
    return out


def image_files_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def class_folders(folder: Path) -> dict[str, list[Path]]:
    """``{sub-folder name: its image files}`` for each sub-folder of ``folder`` with images, sorted."""
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = image_files_in(sub)
        if files:
            classes[sub.name] = files
    return classes


# -- pickles -------------------------------------------------------------------------------------

_ALLOWED_GLOBALS = frozenset(
    {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("collections", "OrderedDict")}
    | {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")}
    | {(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")}
    | {(m, n) for m in ("builtins", "__builtin__") for n in ("bytes", "bytearray")}
)


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for something other than plain data."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data only: dicts, lists, strings, numbers, bytes and numpy arrays.

    Any other global a pickle names (a function such as ``os.system``, an arbitrary class) is
    refused before it is looked up, so loading a file can never run code from it.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise ForbiddenGlobal(f"it references {module}.{name}")
        return super().find_class(module, name)


def load_pickle(path: Path):
    """The data in the pickle at ``path`` (Python 2 pickles included), via :class:`RestrictedUnpickler`."""
    try:
        with open(path, "rb") as file:
            return RestrictedUnpickler(file, encoding="latin1").load()
    except ForbiddenGlobal as exc:
        raise MamlError(
            f"refusing to load {path}: {exc}, and a dataset pickle may hold only numpy arrays, lists "
            "and dicts; replace it with the original dataset file"
        ) from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise MamlError(
            f"cannot read {path} ({type(exc).__name__}: {exc}); the file is damaged or not a dataset pickle, "
            "re-download it"
        ) from None


def pickled_fields(path: Path, what: str, *keys: str) -> dict:
    """Load the pickled dict at ``path`` and check that it has ``keys``."""
    data = load_pickle(path)
    if not isinstance(data, dict) or any(key not in data for key in keys):
        raise MamlError(f"{path} is not a {what} pickle: expected a dict with keys {', '.join(keys)}")
    return data


# -- splits --------------------------------------------------------------------------------------


def split_file(split_dir: Path, split: str, suffix: str, what: str) -> Path:
    path = split_dir / f"{split}{suffix}"
    if not path.is_file():
        lists = ", ".join(f"{s}{suffix}" for s in SPLITS)
        raise MamlError(f"{what} split list {path} not found; set dataset.split_dir to the folder with {lists}")
    return path


def read_json_list(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MamlError(f"cannot read the split list {path}: {exc}") from None
    if not isinstance(data, list):
        raise MamlError(f"{path} must hold a JSON list of classes, not a {type(data).__name__}")
    return data


def splits_by_prefix(class_names: Sequence[str]) -> dict[str, list[str]]:
    """Classes named ``<split>/<name>`` grouped by split."""
    return {split: [name for name in class_names if name.startswith(f"{split}/")] for split in SPLITS}


def few_shot_tasks(
    cache: ImageCache,
    split_names: Mapping[str, Sequence[str]],
    *,
    name: str,
    stats,
    channels: int,
    where: Path,
    **episodes,
) -> FewShotImageTasks:
    """The task distribution over ``cache`` whose splits are the classes named in ``split_names``;
    ``episodes`` are :class:`FewShotImageTasks`' ways/shots/query/eval_*/seed/device."""
    ids = {class_name: i for i, class_name in enumerate(cache.class_names)}
    splits = {}
    for split, names in split_names.items():
        missing = [n for n in names if n not in ids]
        if missing:
            raise MamlError(
                f"the {name} {split} split names {len(missing)} classes that are not in the data at {where} "
                f"(e.g. {missing[0]!r}); the data is incomplete or the split list is for another dataset"
            )
        splits[split] = SplitClasses.of([ids[n] for n in names])
    mean, std = standardisation(stats, channels)
    return FewShotImageTasks(cache, splits, mean=mean, std=std, name=name, **episodes)
