"""Tiny copies of the image datasets in their real on-disk layouts, written into a test's tmp dir.

Every image is one constant colour that says what it is: red = 10 + 10 * class code, green =
30 + 40 * image index (within its class), blue = 200 - 7 * class code. A test reads the codes back
from the pixels of an episode (see :func:`codes_of`) to check classes, splits and labels.
Each builder returns the class codes of each split.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SPLIT_SIZES = {"train": 6, "val": 5, "test": 5}
IMAGES_PER_CLASS = 4
SOURCE_SIZE = (12, 10)  # not square and not the target size: the loaders must resize


def colour(code: int, image: int) -> tuple[int, int, int]:
    return (10 + 10 * code, 30 + 40 * image, 200 - 7 * code)


def write_image(path: Path, rgb, mode: str = "RGB", size=SOURCE_SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, tuple(rgb))
    if mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode != "RGB":
        image = image.convert(mode)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    image.save(path, **({"quality": 95, "subsampling": 0} if jpeg else {}))


def codes_of(x: torch.Tensor, mean, std, tol: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(class code, image index) of each image of ``x`` ``[..., 3, H, W]``, standardised with
    ``mean``/``std``; asserts each image is one colour of the fixture, within ``tol``."""
    mean = torch.tensor(mean).reshape(3, 1, 1)
    std = torch.tensor(std).reshape(3, 1, 1)
    pixels = ((x * std + mean) * 255).round()
    flat = pixels.flatten(-2)
    assert float((flat.amax(-1) - flat.amin(-1)).max()) <= tol, "an image is not one constant colour"
    red, green, blue = flat[..., 0, 0], flat[..., 1, 0], flat[..., 2, 0]
    code, image = ((red - 10) / 10).round().long(), ((green - 30) / 40).round().long()
    expected = torch.stack([10 + 10 * code, 30 + 40 * image, 200 - 7 * code], -1).float()
    assert float((torch.stack([red, green, blue], -1) - expected).abs().max()) <= tol
    return code, image


def _split_codes() -> dict[str, list[int]]:
    codes, start = {}, 0
    for split, count in SPLIT_SIZES.items():
        codes[split] = list(range(start, start + count))
        start += count
    return codes


def synset(code: int) -> str:
    return f"n{code:08d}"


def miniimagenet_folder(root: Path, nested: bool = False) -> dict[str, list[int]]:
    """``<root>/miniimagenet/images/`` (flat, or ``<synset>/`` sub-folders) and Ravi-style CSVs."""
    base = root / "miniimagenet"
    codes = _split_codes()
    for split, split_codes in codes.items():
        rows = ["filename,label"]
        for code in split_codes:
            for i in range(IMAGES_PER_CLASS):
                name = f"{synset(code)}{i + 1:08d}.jpg"
                folder = base / "images" / synset(code) if nested else base / "images"
                write_image(folder / name, colour(code, i))
                rows.append(f"{name},{synset(code)}")
        (base / "splits" / "ravi").mkdir(parents=True, exist_ok=True)
        (base / "splits" / "ravi" / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return codes


def miniimagenet_pickles(root: Path, size: int = 84, protocol: int = pickle.HIGHEST_PROTOCOL) -> dict[str, list[int]]:
    """``mini-imagenet-cache-{split}.pkl``; the classes' images interleaved, as class_dict allows."""
    base = root / "miniimagenet"
    base.mkdir(parents=True, exist_ok=True)
    codes = _split_codes()
    for split, split_codes in codes.items():
        count = len(split_codes)
        image_data = np.zeros((count * IMAGES_PER_CLASS, size, size, 3), dtype=np.uint8)
        class_dict = {}
        for c, code in enumerate(split_codes):
            class_dict[synset(code)] = [i * count + c for i in range(IMAGES_PER_CLASS)]
            for i, index in enumerate(class_dict[synset(code)]):
                image_data[index] = colour(code, i)
        with open(base / f"mini-imagenet-cache-{split}.pkl", "wb") as file:
            pickle.dump({"image_data": image_data, "class_dict": class_dict}, file, protocol=protocol)
    return codes


def tieredimagenet(root: Path) -> dict[str, list[int]]:
    codes = _split_codes()
    for split, split_codes in codes.items():
        for code in split_codes:
            for i in range(IMAGES_PER_CLASS):
                write_image(root / "tieredimagenet" / split / synset(code) / f"{i:04d}.png", colour(code, i))
    return codes


CIFAR_COARSE = ["aquatic_mammals", "fish", "flowers", "food_containers"]
CIFAR_FINE = [
    ["beaver", "dolphin", "otter", "seal", "whale"],
    ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    ["orchid", "poppy", "rose", "sunflower", "tulip"],
    ["bottle", "bowl", "can", "cup", "plate"],
]
CIFAR_TRAIN_IMAGES, CIFAR_TEST_IMAGES = 4, 2


def cifar100(root: Path, protocol: int = 2) -> dict[str, dict[str, list[int]]]:
    """torchvision's ``cifar-100-python/`` with 4 superclasses of 5 classes (code = fine label),
    and CIFAR-FS and FC100 split lists; returns each variant's split codes."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    fine_names = [name for names in CIFAR_FINE for name in names]
    parts = {"train": range(CIFAR_TRAIN_IMAGES), "test": range(CIFAR_TRAIN_IMAGES, CIFAR_TRAIN_IMAGES + 2)}
    for part, images in parts.items():
        rows, fine, coarse = [], [], []
        for i in images:  # image-major, so a class's images are spread through the file
            for code in range(len(fine_names)):
                rows.append(np.repeat(np.array(colour(code, i), dtype=np.uint8), 1024))
                fine.append(code)
                coarse.append(code // 5)
        data = {
            "filenames": [f"img_{n}.png" for n in range(len(rows))],
            "batch_label": f"{part}ing batch 1 of 1",
            "fine_labels": fine,
            "coarse_labels": coarse,
            "data": np.stack(rows),
        }
        with open(folder / part, "wb") as file:
            pickle.dump(data, file, protocol=protocol)
    with open(folder / "meta", "wb") as file:
        pickle.dump({"fine_label_names": fine_names, "coarse_label_names": CIFAR_COARSE}, file, protocol=protocol)

    cifar_fs = {"train": list(range(0, 20, 2)), "val": [1, 3, 5, 7, 9], "test": [11, 13, 15, 17, 19]}
    fc100 = {"train": [0, 1], "val": [2], "test": [3]}  # superclasses
    for split in ("train", "val", "test"):
        pairs = [[CIFAR_COARSE[code // 5], fine_names[code]] for code in cifar_fs[split]]
        _write_json(root / "cifar100" / "splits" / "cifar-fs" / f"{split}.json", pairs)
        _write_json(root / "cifar100" / "splits" / "fc100" / f"{split}.json", [CIFAR_COARSE[c] for c in fc100[split]])
    fc100_codes = {split: [5 * c + j for c in coarse for j in range(5)] for split, coarse in fc100.items()}
    return {"cifar_fs": cifar_fs, "fc100": fc100_codes}


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def cub_folder(code: int) -> str:
    return f"{code + 1:03d}.Bird_{code}"


def cub(root: Path) -> dict[str, list[int]]:
    codes = _split_codes()
    for split, split_codes in codes.items():
        for code in split_codes:
            for i in range(IMAGES_PER_CLASS):
                name = f"Bird_{code}_{i:04d}_{100 + i}.jpg"
                write_image(root / "cub" / "CUB_200_2011" / "images" / cub_folder(code) / name, colour(code, i))
        _write_json(root / "cub" / "splits" / f"{split}.json", [cub_folder(code) for code in split_codes])
    return codes


IMAGE_FOLDER_CLASSES = 12
# one file of each kind per class: the loader converts every mode to RGB or grayscale
IMAGE_FOLDER_FILES = [("0.png", "RGB"), ("1.JPG", "RGB"), ("2.png", "RGBA"), ("3.bmp", "P")]


def image_folder_class(code: int) -> str:
    return f"class_{code:02d}"


def image_folder(path: Path) -> list[str]:
    """``<path>/<class>/<image>`` with 12 classes of 4 images in 4 formats, plus files to ignore."""
    for code in range(IMAGE_FOLDER_CLASSES):
        for i, (name, mode) in enumerate(IMAGE_FOLDER_FILES):
            write_image(path / image_folder_class(code) / name, colour(code, i), mode=mode)
    (path / image_folder_class(0) / "notes.txt").write_text("not an image")
    (path / image_folder_class(1) / ".hidden.png").write_bytes(b"not an image either")
    (path / "empty_class").mkdir()
    return [image_folder_class(code) for code in range(IMAGE_FOLDER_CLASSES)]
