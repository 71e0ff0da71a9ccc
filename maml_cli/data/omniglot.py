"""Omniglot (Lake et al., 2015): 1,623 handwritten characters from 50 alphabets, 20 drawings each.

Reads the two official zips (``images_background.zip``, ``images_evaluation.zip``) or their
extracted folders ``images_*/<Alphabet>/characterNN/*.png``, in any of the layouts people have
them: ``<root>/omniglot/``, ``<root>/`` itself, or torchvision's ``<root>/omniglot-py/``.
Images are decoded once, resized to ``image_size`` (28 in the MAML paper), inverted so that
strokes are 1 and paper is 0, and cached as one uint8 tensor.

Splits:

- ``maml`` (Finn et al., 2017, Sec. 5.2, following Santoro et al., 2016): all characters pooled,
  a seeded permutation picks 1,200 for meta-training (the last ``val_characters`` of them held
  out for validation) and the other 423 for testing.
- ``vinyals`` (Vinyals et al., 2016): the class lists under ``split_dir``
  (``train.txt``/``val.txt``/``test.txt``, lines ``<Alphabet>/characterNN/rotDDD``).

With ``rotations`` each character also appears turned by 90, 180 and 270 degrees, as a class of
its own (the Vinyals lists name their rotations explicitly).
"""

from __future__ import annotations

import logging
import re
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from maml_cli.data.image_files import resize
from maml_cli.data.images import (
    FewShotImageTasks,
    ImageCache,
    SplitClasses,
    default_cache_dir,
    default_data_root,
    with_rotations,
)
from maml_cli.errors import ConfigError, MamlError

log = logging.getLogger("maml_cli")

PARTS = ("images_background", "images_evaluation")
NUM_CHARACTERS, DRAWINGS = 1623, 20
_TORCH_OP_PREFIX = re.compile(r"^\w+, \S+:\d+, ")  # "decode_png, /src/decode_png.cpp:95, " before the reason


def _candidates(root: Path) -> list[Path]:
    return [root / "omniglot", root, root / "omniglot-py"]


def _has_part(folder: Path, part: str) -> bool:
    return (folder / f"{part}.zip").is_file() or (folder / part).is_dir()


def locate(root: Path) -> Path | None:
    """The folder that holds both parts of Omniglot, zipped or extracted, or None."""
    for folder in _candidates(root):
        if all(_has_part(folder, part) for part in PARTS):
            return folder
    return None


def _pngs(folder: Path, part: str) -> Iterator[tuple[str, bytes]]:
    """(``Alphabet/characterNN``, PNG bytes) for every drawing of a part, in sorted order."""
    extracted = folder / part
    if extracted.is_dir():
        for path in sorted(extracted.glob("*/*/*.png")):
            yield f"{path.parent.parent.name}/{path.parent.name}", path.read_bytes()
        return
    with zipfile.ZipFile(folder / f"{part}.zip") as archive:
        for name in sorted(archive.namelist()):
            pieces = name.split("/")
            if name.endswith(".png") and len(pieces) >= 4:
                yield f"{pieces[-3]}/{pieces[-2]}", archive.read(name)


def decode(folder: Path, image_size: int, chunk: int = 2048) -> ImageCache:
    """Every drawing decoded by torchvision.io (pixel for pixel as PIL), resized ``chunk`` at a time
    by one tensor operation each: faster than PIL image by image (``scripts/bench_cache_build.py``)."""
    from torchvision.io import ImageReadMode, decode_png

    class_ids: dict[str, int] = {}
    parts, pending, labels = [], [], []
    for part in PARTS:
        for character, data in _pngs(folder, part):
            try:
                with warnings.catch_warnings():
                    # torchvision 0.29 deprecates its codecs for TorchCodec's, one warning per call:
                    # 32,460 lines that tell a user nothing. The decoder is still there, measured
                    # faster, pixel for pixel PIL's; when it goes, PIL image by image comes back.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    pixels = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.GRAY)
            except RuntimeError as exc:
                raise MamlError(
                    f"Omniglot at {folder}: a drawing of {part}/{character} cannot be decoded "
                    f"({_TORCH_OP_PREFIX.sub('', str(exc))}); re-extract or re-download both zips"
                ) from None
            if pending and (len(pending) == chunk or pixels.shape != pending[0].shape):
                parts.append(resize(torch.stack(pending), image_size))
                pending.clear()
            pending.append(pixels)
            labels.append(class_ids.setdefault(character, len(class_ids)))
    if len(class_ids) != NUM_CHARACTERS or len(labels) != NUM_CHARACTERS * DRAWINGS:
        raise MamlError(
            f"Omniglot at {folder} is incomplete: {len(class_ids)} characters and {len(labels)} "
            f"images, expected {NUM_CHARACTERS} and {NUM_CHARACTERS * DRAWINGS}; re-extract or "
            "re-download both zips"
        )
    parts.append(resize(torch.stack(pending), image_size))
    return ImageCache(255 - torch.cat(parts), torch.tensor(labels), list(class_ids))  # strokes bright


def _download(root: Path) -> None:
    try:
        from torchvision.datasets import Omniglot
    except ImportError:
        raise MamlError("dataset.download=true needs torchvision: pip install torchvision") from None
    for background in (True, False):
        Omniglot(str(root), background=background, download=True)


def maml_split(num_classes: int, val_characters: int, split_seed: int) -> dict[str, list[int]]:
    order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(split_seed)).tolist()
    train_pool, test = order[:1200], order[1200:]
    return {"train": train_pool[: 1200 - val_characters], "val": train_pool[1200 - val_characters :], "test": test}


def vinyals_split(split_dir: Path, class_names: list[str]) -> dict[str, SplitClasses]:
    ids = {name: i for i, name in enumerate(class_names)}
    splits = {}
    for split in ("train", "val", "test"):
        path = split_dir / f"{split}.txt"
        if not path.is_file():
            raise MamlError(
                f"Vinyals split list {path} not found; set dataset.split_dir to the folder with "
                "train.txt, val.txt and test.txt"
            )
        labels, rotations = [], []
        for line in path.read_text().split():
            alphabet, character, rot = line.strip().split("/")
            if f"{alphabet}/{character}" not in ids:
                raise MamlError(f"{path} names {alphabet}/{character}, which is not in the Omniglot data")
            labels.append(ids[f"{alphabet}/{character}"])
            rotations.append(int(rot.removeprefix("rot")) // 90)
        splits[split] = SplitClasses.of(labels, rotations)
    return splits


def omniglot_tasks(
    root: str | None = None,
    cache_dir: str | None = None,
    download: bool = False,
    split: str = "maml",
    split_dir: str | None = None,
    split_seed: int = 0,
    val_characters: int = 100,
    rotations: bool = True,
    image_size: int = 28,
    channels: int = 1,
    **episodes,
) -> FewShotImageTasks:
    """Build the Omniglot task distribution; the arguments are the ``dataset`` config keys
    (``episodes``: ways, shots, query, eval_shots, eval_query, seed, device)."""
    if split not in ("maml", "vinyals"):
        raise ConfigError(f"dataset.split must be maml or vinyals, got {split!r}")
    if not 0 < val_characters < 1200:
        raise ConfigError(f"dataset.val_characters must be in 1..1199, got {val_characters}")
    data_root = Path(root) if root else default_data_root()
    folder = locate(data_root)
    if folder is None and download:
        _download(data_root)
        folder = locate(data_root)
    if folder is None:
        looked = ", ".join(str(p) for p in _candidates(data_root))
        raise MamlError(
            f"Omniglot not found (looked in {looked}); put images_background.zip and "
            "images_evaluation.zip (or their extracted folders) in one of them, point dataset.root "
            "or MAML_DATA_ROOT at their parent, or pass dataset.download=true"
        )
    cache_path = Path(cache_dir or default_cache_dir()) / f"omniglot_{image_size}px.pt"
    cache = ImageCache.load_or_build(cache_path, lambda: decode(folder, image_size))

    if split == "maml":
        ids = maml_split(len(cache.class_names), val_characters, split_seed)
        make = with_rotations if rotations else SplitClasses.of
        splits = {name: make(chars) for name, chars in ids.items()}
    else:
        splits = vinyals_split(Path(split_dir) if split_dir else folder / "splits" / "vinyals", cache.class_names)
    return FewShotImageTasks(
        cache,
        splits,
        name="omniglot",
        inverted=True,  # decode() stores 255 - pixels
        **episodes,
    )
