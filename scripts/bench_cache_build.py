"""Time building the image caches, the decoding and resizing of every image (not the training):

- Omniglot, all 32,460 drawings of the real zips (1-bit PNGs, 105x105 -> 28x28 grey): the old path
  (PIL, image by image) against ``maml_cli.data.omniglot.decode`` (``torchvision.io.decode_png``,
  resized 2,048 at a time by one antialiased ``interpolate``);
- generated folders of 500x375 RGB JPEGs and PNGs -> 84x84 RGB and grey: the package's
  ``image_files.decode_files`` (PIL, JPEGs decoded at a fraction of their size by its draft mode)
  against a torchvision.io candidate (full-size decode, antialiased ``interpolate``), which was not
  adopted as it is no faster;
- arrays as the miniImageNet and CIFAR pickles hold them (random pixels): the old path (PIL, image
  by image) against ``image_files.hwc_to_chw`` (tensor operations over 1,024 images at a time).

Old and new runs alternate, ``--repeats`` times each; medians are reported, with the largest and
mean difference between the two paths' pixels. For files, both are also compared with PIL resizing
the full image (no draft mode), the faithful antialiased bilinear resize.

    MAML_DATA_ROOT=/path/to/data python scripts/bench_cache_build.py [--repeats 3] [--jpegs 500]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit import provenance  # noqa: E402

from maml_cli.data import image_files, omniglot  # noqa: E402
from maml_cli.data.images import default_data_root  # noqa: E402

# -- the old path, as it was before torchvision.io (maml_cli/data/*.py at e8e8bb1) ----------------


def old_to_chw(image, image_size: int, channels: int, draft: bool = True) -> torch.Tensor:
    mode = "L" if channels == 1 else "RGB"
    if draft:
        image.draft(mode, (image_size, image_size))  # JPEG: the decoder shrinks by a power of 2 first
    small = image.convert(mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
    pixels = torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8)
    return pixels.reshape(image_size, image_size, channels).permute(2, 0, 1)


def old_decode_files(files, image_size: int, channels: int, draft: bool = True) -> torch.Tensor:
    def one(path):
        with Image.open(path) as image:
            return old_to_chw(image, image_size, channels, draft)

    images = torch.empty((len(files), channels, image_size, image_size), dtype=torch.uint8)
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        for i, chw in enumerate(pool.map(one, files)):
            images[i] = chw
    return images


def old_omniglot(folder: Path, image_size: int) -> torch.Tensor:
    images = []
    for part in omniglot.PARTS:
        for _, data in omniglot._pngs(folder, part):
            with Image.open(io.BytesIO(data)) as image:
                small = image.convert("L").resize((image_size, image_size), Image.Resampling.BILINEAR)
                pixels = torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8)
            images.append(255 - pixels.reshape(1, image_size, image_size))
    return torch.stack(images)


def old_hwc_to_chw(array: np.ndarray, image_size: int, channels: int) -> torch.Tensor:
    out = torch.empty((len(array), channels, image_size, image_size), dtype=torch.uint8)
    for i in range(len(array)):
        image = array[i, :, :, 0] if array.shape[3] == 1 else array[i]
        out[i] = old_to_chw(Image.fromarray(np.ascontiguousarray(image)), image_size, channels)
    return out


# -- the new paths: the package as it is, and the torchvision.io candidate for files -------------


def package_decode_files(files, image_size: int, channels: int) -> torch.Tensor:
    return image_files.decode_files(files, [0] * len(files), ["x"], image_size, channels).images


def torchvision_decode_files(files, image_size: int, channels: int) -> torch.Tensor:
    """The candidate: read_file + decode_image (a JPEG's grey straight from its luma channel; a
    PNG's as RGB, then PIL's luma), then one antialiased interpolate per image, in threads."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    def one(path):
        gray = channels == 1 and path.suffix == ".jpg"
        pixels = decode_image(read_file(str(path)), mode=ImageReadMode.GRAY if gray else ImageReadMode.RGB)
        return image_files.resize(image_files.to_channels(pixels[None], channels), image_size)[0]

    images = torch.empty((len(files), channels, image_size, image_size), dtype=torch.uint8)
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        for i, chw in enumerate(pool.map(one, files)):
            images[i] = chw
    return images


def new_omniglot(folder: Path, image_size: int) -> torch.Tensor:
    return omniglot.decode(folder, image_size).images


# -- data and timing ----------------------------------------------------------------------------


def make_images(folder: Path, count: int, suffix: str, seed: int) -> list[Path]:
    """``count`` 500x375 RGB photos-ish: smooth random colour fields with noise, so JPEG has work."""
    from torchvision.io import encode_jpeg, encode_png, write_file

    generator = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        base = torch.rand(1, 3, 12, 16, generator=generator)
        image = F.interpolate(base, size=(375, 500), mode="bicubic", align_corners=False)[0]
        image = (image + 0.08 * torch.randn(3, 375, 500, generator=generator)).clamp(0, 1).mul(255).to(torch.uint8)
        path = folder / f"{i:04d}{suffix}"
        write_file(str(path), encode_jpeg(image, quality=90) if suffix == ".jpg" else encode_png(image))
        files.append(path)
    return files


def compare(name: str, count: int, old, new, repeats: int, labels=("old", "new"), seed=None) -> dict:
    """Time ``old`` and ``new`` alternately; print the medians, their ratio and the pixels' difference
    (``seed``: of the generated images, ``None`` for real ones)."""
    times: dict[str, list[float]] = {"old": [], "new": []}
    results = {}
    for _ in range(repeats):
        for which, build in (("old", old), ("new", new)):
            start = time.perf_counter()
            results[which] = build()
            times[which].append(time.perf_counter() - start)
    old_s, new_s = statistics.median(times["old"]), statistics.median(times["new"])
    diff = (results["old"].int() - results["new"].int()).abs()
    first, second = labels
    print(
        f"{name:26s} {count:6d} images  {first} {old_s:6.2f} s ({count / old_s:5.0f}/s)  {second} {new_s:6.2f} s "
        f"({count / new_s:5.0f}/s)  {first}/{second} {old_s / new_s:4.2f}x  pixels differ by max {int(diff.max())} "
        f"mean {float(diff.float().mean()):.4f}  (runs: {[round(t, 2) for t in times['old']]} "
        f"{[round(t, 2) for t in times['new']]})  {provenance(seed, torch.get_num_threads())}",
        flush=True,
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jpegs", type=int, default=500)
    parser.add_argument("--pngs", type=int, default=200)
    parser.add_argument("--skip-omniglot", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)  # torch.frombuffer on bytes
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads")

    folder = omniglot.locate(default_data_root())
    if folder is not None and not args.skip_omniglot:
        compare(
            "omniglot 105->28 grey (zips)",
            32460,
            lambda: old_omniglot(folder, 28),
            lambda: new_omniglot(folder, 28),
            args.repeats,
            seed="none (real images)",
        )
    elif not args.skip_omniglot:
        print(f"Omniglot not found under {default_data_root()} (set MAML_DATA_ROOT); skipped")

    with tempfile.TemporaryDirectory() as tmp:
        for suffix, count in ((".jpg", args.jpegs), (".png", args.pngs)):
            seed = len(suffix) + count
            files = make_images(Path(tmp) / suffix[1:], count, suffix, seed=seed)
            for channels in (3, 1):
                results = compare(
                    f"{suffix[1:]} 500x375->84 {'RGB' if channels == 3 else 'grey'}",
                    count,
                    partial(package_decode_files, files, 84, channels),
                    partial(torchvision_decode_files, files, 84, channels),
                    args.repeats,
                    labels=("PIL", "torchvision"),
                    seed=seed,
                )
                full = old_decode_files(files, 84, channels, draft=False)
                for which, label in (("old", "PIL"), ("new", "torchvision")):
                    diff = (full.int() - results[which].int()).abs()
                    print(
                        f"{'':26s} {label} vs PIL without draft mode: max {int(diff.max())} "
                        f"mean {float(diff.float().mean()):.4f}"
                    )

    rng = np.random.default_rng(0)
    for name, shape, size, channels in (
        ("cifar 32->84 RGB", (6000, 32, 32, 3), 84, 3),
        ("miniimagenet 84->64 RGB", (6000, 84, 84, 3), 64, 3),
        ("miniimagenet 84->28 grey", (6000, 84, 84, 3), 28, 1),
    ):
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        compare(
            name,
            shape[0],
            partial(old_hwc_to_chw, array, size, channels),
            partial(image_files.hwc_to_chw, array, size, channels),
            args.repeats,
            seed=0,  # one generator, seeded 0, draws the arrays in turn
        )


if __name__ == "__main__":
    main()
