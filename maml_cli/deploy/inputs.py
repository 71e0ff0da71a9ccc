"""Files to tensors for a deployed model: images as training decoded them, rows of a CSV.

    model = maml_cli.load("runs/my_images/checkpoints/best.pt")
    support_x, support_y, classes = read_support_folder("support/", model.inputs)  # one sub-folder per class
    adapted = model.adapt(support_x, support_y, classes=classes)
    query_x, names = read_images("new_photos/", model.inputs)
    probabilities = adapted.predict(query_x)

What an input must look like comes from the checkpoint's ``inputs`` (written by ``maml-train``;
:meth:`maml_cli.data.images.FewShotImageTasks.input_spec`, :meth:`~maml_cli.data.sinusoid.SinusoidTasks.input_spec`).
An image goes through the very steps training's cache build and episodes took: PIL decodes it
(:func:`~maml_cli.data.image_files._decode_file`), converts it to grayscale or RGB and resizes it to
the training size, then it is inverted if training's images were (Omniglot), scaled to [0, 1] and
standardised with training's mean and std. Images of another size or mode are converted, and
said so in one log line; a file that does not decode is refused (with the count and the first
names), never skipped, so that no input silently goes missing from a support set or a prediction
file. Files of a folder are picked as training picked them: by image suffix, hidden files left out.

A CSV holds one row per example: the feature columns the checkpoint names (``features``), the
target column (``target``) for a support set, and optionally an ``id`` column that names the rows
(else rows are numbered from 1, the first row after the header). Any other column, a missing one,
an empty or NaN cell or a value that is not a number is refused in one line naming them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from maml_cli.data.image_files import IMAGE_SUFFIXES, _decode_file, image_files_in
from maml_cli.errors import ConfigError, MamlError

log = logging.getLogger("maml_cli")

#: The optional CSV column that names the rows (in prediction files).
ID_COLUMN = "id"

PathLike = str | Path


# -- what the checkpoint says ----------------------------------------------------------------------


def image_spec(inputs_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The ``image`` part of a checkpoint's inputs, or one line saying this model takes no images."""
    image = inputs_spec.get("image")
    if not image:
        raise ConfigError(f"this model takes {_what_it_takes(inputs_spec)}, not image files")
    return dict(image)


def table_columns(inputs_spec: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``(feature columns, target columns)`` of a model that reads rows of a table."""
    features, target = inputs_spec.get("features"), inputs_spec.get("target")
    if not features or not target:
        raise ConfigError(f"this model takes {_what_it_takes(inputs_spec)}, not rows of a CSV")
    return [str(f) for f in features], [str(target)] if isinstance(target, str) else [str(t) for t in target]


def _what_it_takes(inputs_spec: Mapping[str, Any]) -> str:
    if inputs_spec.get("image"):
        image = inputs_spec["image"]
        return f"images ({image['channels']}-channel, {image['size']}x{image['size']}): a folder of them"
    if inputs_spec.get("features"):
        return f"rows of a CSV with columns {', '.join(map(str, inputs_spec['features']))}"
    return f"inputs of shape {list(inputs_spec.get('input_shape', []))}, which maml-cli cannot read from files"


# -- images ----------------------------------------------------------------------------------------


def _mode_name(channels: int) -> str:
    return "grayscale" if channels == 1 else "RGB"


def _decode_all(files: Sequence[Path], image: Mapping[str, Any], what: str) -> Tensor:
    """uint8 ``[N, C, size, size]`` of ``files``; every file that does not decode is named in one line."""
    from PIL import Image

    size, channels = int(image["size"]), int(image["channels"])
    out = torch.empty((len(files), channels, size, size), dtype=torch.uint8)
    failed: list[tuple[Path, str]] = []
    sizes: dict[str, int] = {}
    modes: dict[str, int] = {}
    target_mode = "L" if channels == 1 else "RGB"
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # as training: named, not a warning
        for i, path in enumerate(files):
            try:
                out[i] = _decode_file(path, size, channels)
                with Image.open(path) as header:  # reads the header only
                    width, height, mode = header.width, header.height, header.mode
            except MamlError as exc:
                failed.append((path, str(exc)))
                continue
            if (width, height) != (size, size):
                sizes[f"{width}x{height}"] = sizes.get(f"{width}x{height}", 0) + 1
            if mode != target_mode:
                modes[mode] = modes.get(mode, 0) + 1
    if failed:
        names = ", ".join(str(p) for p, _ in failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        raise MamlError(
            f"{len(failed)} of {len(files)} {what} files cannot be decoded as images: {names}; replace or remove them "
            f"(first: {failed[0][1].split('; replace')[0]})"
        )
    notes, total = [], len(files)
    if sizes:
        seen = ", ".join(sorted(sizes, key=sizes.get, reverse=True)[:3]) + (", ..." if len(sizes) > 3 else "")
        notes.append(f"{sum(sizes.values())} of {total} resized to {size}x{size} (from {seen})")
    if modes:
        from_modes = ", ".join(sorted(modes))
        notes.append(f"{sum(modes.values())} of {total} converted to {_mode_name(channels)} (from {from_modes})")
    if notes:
        log.info("%s images: %s, as the model's training images were", what, ", ".join(notes))
    return out


def preprocess(pixels: Tensor, image: Mapping[str, Any]) -> Tensor:
    """uint8 ``[N, C, H, W]`` (decoded, converted and resized) as the float inputs training gave the
    model: inverted if training's were, scaled to [0, 1], standardised with its mean and std."""
    if image.get("inverted"):
        pixels = 255 - pixels  # Omniglot's cache holds 255 - pixels: strokes bright
    x = pixels.float().div_(255.0)
    if image.get("mean") is not None and image.get("std") is not None:
        channels = x.shape[1]
        mean = torch.tensor(list(image["mean"]), dtype=x.dtype).reshape(channels, 1, 1)
        std = torch.tensor(list(image["std"]), dtype=x.dtype).reshape(channels, 1, 1)
        x = (x - mean) / std
    return x


def images_in(folder: PathLike) -> list[Path]:
    """The image files under ``folder`` (its sub-folders too), sorted, hidden files left out."""
    folder = Path(folder)
    found = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def read_images(paths: PathLike | Sequence[PathLike], inputs_spec: Mapping[str, Any]) -> tuple[Tensor, list[str]]:
    """Images ready for :meth:`AdaptedModel.predict`: ``(x [N, C, H, W], names)``.

    ``paths`` is a folder (every image under it, sorted), one image file, or a list of image files
    (taken in that order, whatever their suffix). ``names`` are the files' paths as given.
    """
    image = image_spec(inputs_spec)
    if isinstance(paths, (str, Path)):
        path = Path(paths)
        if path.is_dir():
            files = images_in(path)
            if not files:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
                raise MamlError(f"no images in {path} (files ending {suffixes}); point to a folder of images")
        else:
            files = [path]
    else:
        files = [Path(p) for p in paths]
        if not files:
            raise ConfigError("no image files given")
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise MamlError(f"input file not found: {', '.join(missing[:3])}{more}")
    x = preprocess(_decode_all(files, image, "input"), image)
    return x, [str(p) for p in files]


def read_support_folder(path: PathLike, inputs_spec: Mapping[str, Any]) -> tuple[Tensor, Tensor, list[str]]:
    """A support set from a folder with one sub-folder of images per class:
    ``(x [K, C, H, W], y [K] class indices, class names)``; classes are the sub-folder names, sorted."""
    image = image_spec(inputs_spec)
    folder = Path(path)
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "not found"
        raise MamlError(f"support folder {folder} {what}; give a folder with one sub-folder of images per class")
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = {sub.name: image_files_in(sub) for sub in subfolders}
    empty = [name for name, files in classes.items() if not files]
    if empty:
        names = ", ".join(repr(n) for n in empty)
        raise MamlError(
            f"support class folder(s) {names} in {folder} hold no images (files ending "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder"
        )
    if len(classes) < 2:
        found = f"only {list(classes)[0]!r}" if classes else "none"
        loose = " (images directly in it do not count)" if image_files_in(folder) else ""
        raise MamlError(
            f"support folder {folder} needs one sub-folder of images per class and at least 2 classes, "
            f"found {found}{loose}"
        )
    files = [f for fs in classes.values() for f in fs]
    labels = [label for label, fs in enumerate(classes.values()) for _ in fs]
    x = preprocess(_decode_all(files, image, "support"), image)
    return x, torch.tensor(labels, dtype=torch.long), list(classes)


# -- tables ----------------------------------------------------------------------------------------


def _rows(indices, limit: int = 5) -> str:
    shown = ", ".join(str(int(i) + 1) for i in list(indices)[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def read_csv(
    path: PathLike, inputs_spec: Mapping[str, Any], with_target: bool
) -> tuple[Tensor, Tensor | None, list[str]]:
    """Rows of a CSV as model inputs: ``(x [N, features], y [N, targets] or None, row ids)``.

    The columns are the checkpoint's feature columns, its target column when ``with_target`` (a
    support set; without it a target column is allowed and left out), and an optional ``id``
    column naming the rows (else the ids are the row numbers, 1 for the first row after the header).
    """
    import pandas as pd

    features, targets = table_columns(inputs_spec)
    path = Path(path)
    if not path.is_file():
        raise MamlError(f"CSV file {path} {'is a folder' if path.is_dir() else 'not found'}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MamlError(f"cannot read {path} as a CSV: {detail}") from None
    columns = [str(c).strip() for c in table.columns]
    table.columns = columns
    needed = features + (targets if with_target else [])
    allowed = set(needed) | {ID_COLUMN} | set(targets)
    missing = [c for c in needed if c not in columns]
    extra = [c for c in columns if c not in allowed]
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"lacks column(s) {', '.join(missing)}")
        if extra:
            problems.append(f"has column(s) the model does not take: {', '.join(extra)}")
        expected = ", ".join(needed + [f"optional {ID_COLUMN}"])
        raise MamlError(f"{path} {' and '.join(problems)}; expected columns {expected}")
    if len(table) == 0:
        raise MamlError(f"{path} has no rows")
    values = {}
    for column in needed:
        text = table[column].str.strip()
        blank = text.index[(text == "") | text.str.lower().isin(["nan", "na", "null", "none"])]
        numbers = pd.to_numeric(text.where(text != ""), errors="coerce")
        bad = numbers.index[numbers.isna() & ~numbers.index.isin(blank)]
        if len(bad):
            example = table[column][bad[0]]
            raise MamlError(
                f"{path}: column {column} holds values that are not numbers in row(s) {_rows(bad)} "
                f"(e.g. {example!r}; rows count from 1 after the header)"
            )
        if len(blank):
            raise MamlError(
                f"{path}: column {column} is empty or NaN in row(s) {_rows(blank)} (rows count from 1 after the "
                "header); fill or remove those rows"
            )
        values[column] = numbers.to_numpy(dtype="float64")
    infinite = [c for c in needed if not np.isfinite(values[c]).all()]
    if infinite:
        rows = sorted({int(i) for c in infinite for i in np.flatnonzero(~np.isfinite(values[c]))})
        raise MamlError(f"{path}: infinite values in row(s) {_rows(rows)} (columns {', '.join(infinite)})")
    x = torch.from_numpy(np.stack([values[c] for c in features], axis=1)).float()
    y = torch.from_numpy(np.stack([values[c] for c in targets], axis=1)).float() if with_target else None
    ids = list(table[ID_COLUMN]) if ID_COLUMN in columns else [str(i + 1) for i in range(len(table))]
    return x, y, ids
