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

A model meta-trained on a table (``dataset=table``; the checkpoint's inputs hold a ``table``)
reads a CSV or Parquet file with that table's columns: its feature columns (and SMILES column),
the target column for a support set, an optional ``id`` column naming the rows; other columns
(the task column, notes) are ignored. Rows are encoded by training's own
:func:`~maml_cli.data.table_files.encode_rows` with training's statistics: numbers standardised
with the meta-training mean and std, categories one-hot in training's order, SMILES as Morgan
fingerprints. As in training, a missing number is the meta-training mean, and a missing category
or one the meta-training tasks never had is all zeros; both are said in one log line naming the
rows. A value that is not a number in a numeric column, and a SMILES RDKit cannot read, are
refused in one line naming the rows, in a support set and in inputs alike: no row goes missing
from a prediction file. For classification the task's classes are the distinct target values of
the support set, sorted as training sorted class values (so in a binary task the larger value,
1 or True, is the positive class), and named by those values: predictions are written as the
original values, with ``p_<value>`` columns.

A model meta-trained on text (``dataset=clinc150``; the checkpoint's inputs hold a ``text``
tokeniser) reads utterances from a CSV (or TSV, Parquet): a ``text`` column, a ``label`` column
for a support set, an optional ``id`` column naming the rows; other columns are ignored. Each
utterance is tokenised by the checkpoint's own tokeniser (:class:`~maml_cli.data.text.Tokeniser`,
rebuilt from its spec), the very code that built training's token cache, so the ids are the ones
training saw: the meta-training vocabulary's words, hashed character n-grams for other words,
padded or cut to training's ``max_length`` tokens (a cut is said in one log line). An utterance
without a word (empty, or punctuation only) and an empty label are refused in one line naming the
rows. The task's classes are the distinct labels of the support set, sorted, and name the
predictions (``p_<label>`` columns).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
#: A text model's CSV columns: the utterance, and its class (a support set).
TEXT_COLUMN, LABEL_COLUMN = "text", "label"

PathLike = str | Path


# -- what the checkpoint says ----------------------------------------------------------------------


def image_spec(inputs_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The ``image`` part of a checkpoint's inputs, or one line saying this model takes no images."""
    image = inputs_spec.get("image")
    if not image:
        raise ConfigError(f"this model takes {_what_it_takes(inputs_spec)}, not image files")
    return dict(image)


def table_columns(inputs_spec: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``(feature columns, target columns)`` of a model that reads rows of a table; a model of a
    ``dataset=table`` run has no feature columns here: its inputs are encoded (:func:`read_csv`);
    a text model's are its ``text`` and ``label`` columns (tokenised by :func:`read_text_rows`)."""
    if inputs_spec.get("text"):
        return [TEXT_COLUMN], [LABEL_COLUMN]
    if inputs_spec.get("table"):
        return [], [str(inputs_spec["table"]["target_column"])]
    features, target = inputs_spec.get("features"), inputs_spec.get("target")
    if not features or not target:
        raise ConfigError(f"this model takes {_what_it_takes(inputs_spec)}, not rows of a CSV")
    return [str(f) for f in features], [str(target)] if isinstance(target, str) else [str(t) for t in target]


def _what_it_takes(inputs_spec: Mapping[str, Any]) -> str:
    if inputs_spec.get("image"):
        image = inputs_spec["image"]
        return f"images ({image['channels']}-channel, {image['size']}x{image['size']}): a folder of them"
    if inputs_spec.get("table"):
        return f"rows of a CSV with columns {', '.join(_table_columns_needed(inputs_spec['table'], False))}"
    if inputs_spec.get("text"):
        length = inputs_spec["text"].get("max_length")
        return (
            f"utterances of up to {length} tokens: a CSV with a {TEXT_COLUMN} column "
            f"(and {LABEL_COLUMN} for a support set), one utterance a row"
        )
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
    if inputs_spec.get("table"):  # a table model's support set is a CSV (maml-adapt support=...)
        return read_support_table(path, inputs_spec)
    if inputs_spec.get("text"):  # so is a text model's: utterances and their labels
        return read_support_text(path, inputs_spec)
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

    For a model of a ``dataset=table`` run see :func:`read_table_rows` (``y`` is then class indices
    ``[N]`` for classification), for a text model :func:`read_text_rows` (``x`` token ids, ``y``
    class indices). Otherwise the columns are the checkpoint's feature columns, its
    target column when ``with_target`` (a support set; without it a target column is allowed and
    left out), and an optional ``id`` column naming the rows (else the ids are the row numbers, 1
    for the first row after the header).
    """
    import pandas as pd

    if inputs_spec.get("table"):
        rows = read_table_rows(path, inputs_spec, with_target)
        return rows.x, rows.y, rows.ids
    if inputs_spec.get("text"):
        texts = read_text_rows(path, inputs_spec, with_label=with_target)
        return texts.x, texts.y, texts.ids
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


# -- rows of a meta-training table (dataset=table) -------------------------------------------------


@dataclass
class TableRows:
    x: Tensor  # float32 [N, features], encoded as training encoded its rows
    y: Tensor | None  # float32 [N, 1] targets, or int64 [N] class indices; None without a target
    classes: list[str] | None  # classification: the class of each index, the target values as text
    ids: list[str]


def _table_columns_needed(table: Mapping[str, Any], with_target: bool) -> list[str]:
    smiles = [table["smiles"]["column"]] if table.get("smiles") else []
    return [*smiles, *table["feature_columns"], *([table["target_column"]] if with_target else [])]


def read_support_table(path: PathLike, inputs_spec: Mapping[str, Any]) -> tuple[Tensor, Tensor, list[str] | None]:
    """A support set of a table model: ``(x, y, classes)``, as :func:`read_table_rows` reads it."""
    rows = read_table_rows(path, inputs_spec, with_target=True)
    return rows.x, rows.y, rows.classes


def read_table_rows(path: PathLike, inputs_spec: Mapping[str, Any], with_target: bool) -> TableRows:
    """Rows of a CSV or Parquet file for a model meta-trained on a table, encoded exactly as its
    training rows were (see the module's docstring for the rules)."""
    from maml_cli.data.table_files import TableEncoder, encode_rows, read_table

    table = inputs_spec["table"]
    encoder = TableEncoder.from_spec(table)
    target, classes = str(table["target_column"]), table.get("classes")
    path = Path(path)
    if not path.is_file():
        raise MamlError(f"table {path} {'is a folder' if path.is_dir() else 'not found'}; give a CSV or Parquet file")
    text = [c for c, kind in zip(encoder.categorical, encoder.categorical_kinds) if kind == "text"]
    text += [encoder.smiles_column] if encoder.smiles_column else []
    text += [ID_COLUMN] + ([target] if classes and all(isinstance(c, str) for c in classes) else [])
    frame, _ = read_table(str(path), text_columns=text)
    needed = _table_columns_needed(table, with_target)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise MamlError(
            f"{path} lacks column(s) {', '.join(missing)}; this model reads columns {', '.join(needed)} "
            f"(optional {ID_COLUMN} names the rows; other columns are ignored)"
        )
    frame = _numbers_as_trained(frame, encoder, path)
    if encoder.smiles_column:
        _refuse_unreadable_smiles(frame[encoder.smiles_column], encoder, path)
    _note_filled(frame, encoder, path)
    x = encode_rows(frame, encoder)
    y, names = None, None
    if with_target:
        y, names = _table_targets(frame[target], target, inputs_spec["problem"] == "classification", path)
    if ID_COLUMN in frame.columns:
        ids = [str(v) if isinstance(v, str) else str(i + 1) for i, v in enumerate(frame[ID_COLUMN])]
    else:
        ids = [str(i + 1) for i in range(len(frame))]
    return TableRows(x, y, names, ids)


def _numbers_as_trained(frame, encoder, path: Path):
    """The numeric columns as numbers of training's kind: a cell that is not a number is refused."""
    import pandas as pd

    frame = frame.copy()
    for column, kind in zip(encoder.numeric, encoder.numeric_kinds):
        values = frame[column]
        if pd.api.types.is_bool_dtype(values):
            frame[column] = values.astype("float64")
            continue
        if kind == "bool":
            values = values.map(_bool_word)
        numbers = pd.to_numeric(values, errors="coerce")
        bad = np.flatnonzero(numbers.isna().to_numpy() & values.notna().to_numpy())
        if len(bad):
            raise MamlError(
                f"{path}: column {column} holds values that are not numbers in row(s) {_rows(bad)} "
                f"(e.g. {frame[column].iloc[bad[0]]!r}; rows count from 1 after the header)"
            )
        frame[column] = numbers.astype("float32") if kind == "float32" else numbers.astype("float64")
    return frame


def _bool_word(value: Any) -> Any:
    """ "true"/"false" (any case) as 1/0 for a boolean column; anything else as it is."""
    if isinstance(value, str):
        return {"true": "1", "false": "0"}.get(value.strip().lower(), value)
    return value


def _refuse_unreadable_smiles(smiles, encoder, path: Path) -> None:
    from maml_cli.data.molecules import morgan_fingerprints

    _, index = morgan_fingerprints(smiles.tolist(), encoder.fingerprint_radius, encoder.fingerprint_bits)
    bad = np.flatnonzero(index < 0)
    if len(bad):
        raise MamlError(
            f"{path}: RDKit cannot read the SMILES of column {encoder.smiles_column} in row(s) {_rows(bad)} "
            f"(e.g. {smiles.iloc[bad[0]]!r}; rows count from 1 after the header); fix or remove those rows"
        )


def _note_filled(frame, encoder, path: Path) -> None:
    """One log line for missing numbers (taken as the meta-training mean) and categories the
    meta-training tasks never had (all zeros): training's rules, said."""
    from maml_cli.data.table_files import encode_dense

    encoded = encode_dense(frame, encoder)
    notes = []
    for what, mask, columns, rule in (
        ("missing numbers", encoded.missing_numbers, encoder.numeric, "taken as the meta-training mean"),
        ("categories unseen in meta-training", encoded.unseen_categories, encoder.categorical, "encoded as none"),
    ):
        if mask.any():
            rows = np.flatnonzero(mask.any(axis=1))
            named = ", ".join(c for c, hit in zip(columns, mask.any(axis=0)) if hit)
            notes.append(f"{int(mask.sum())} {what} ({named}; row(s) {_rows(rows)}) {rule}")
    if notes:
        log.info("%s: %s, as in training", path.name, "; ".join(notes))


def _table_targets(values, column: str, classification: bool, path: Path) -> tuple[Tensor, list[str] | None]:
    import pandas as pd

    empty = np.flatnonzero(values.isna().to_numpy())
    if len(empty):
        raise MamlError(
            f"{path}: target column {column} is empty or NaN in row(s) {_rows(empty)} (rows count from 1 after "
            "the header); fill or remove those rows"
        )
    if not classification:
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", copy=True)
        bad = np.flatnonzero(~np.isfinite(numbers))
        if len(bad):
            raise MamlError(
                f"{path}: target column {column} holds values that are not numbers in row(s) {_rows(bad)} "
                f"(e.g. {values.iloc[bad[0]]!r}; rows count from 1 after the header)"
            )
        return torch.from_numpy(numbers).float()[:, None], None
    try:
        codes, uniques = pd.factorize(values, sort=True)  # the order training gave class values
    except TypeError:
        raise MamlError(f"{path}: target column {column} mixes numbers and text; use one kind of class value") from None
    classes = [str(v) for v in uniques.tolist()]
    if len(classes) < 2:
        raise MamlError(
            f"{path}: the support set has one class ({classes[0]}) in target column {column}; a task needs at "
            "least 2 classes"
        )
    return torch.from_numpy(codes.astype(np.int64)), classes


# -- utterances (a model meta-trained on text: dataset=clinc150) ------------------------------------


def tokeniser_of(inputs_spec: Mapping[str, Any]):
    """The checkpoint's own tokeniser, rebuilt from the spec training kept in its ``inputs``, or
    one line saying this model takes no text."""
    from maml_cli.data.text import Tokeniser

    text = inputs_spec.get("text")
    if not text:
        raise ConfigError(f"this model takes {_what_it_takes(inputs_spec)}, not utterances")
    return Tokeniser.from_spec(text)


def _token_count(tokeniser, text: str) -> int:
    """Tokens of ``text`` before the cut at ``max_length``."""
    from maml_cli.data.text import words

    known = tokeniser._ids  # the vocabulary's ids, as Tokeniser.ids looks them up
    return sum(1 if w in known else len(tokeniser.subword_ids(w)) for w in words(text))


def without_words(texts: Sequence[str]) -> list[int]:
    """Positions of the utterances with no word to tokenise (empty, or punctuation only)."""
    from maml_cli.data.text import words

    return [i for i, text in enumerate(texts) if not words(text)]


def encode_utterances(texts: Sequence[str], inputs_spec: Mapping[str, Any], what: str = "input") -> Tensor:
    """Token ids ``[N, max_length]`` (int64, 0-padded) of ``texts``, exactly as training's cache
    holds its utterances (:func:`maml_cli.data.clinc150.build_cache` encodes with the same
    tokeniser). Every utterance must have a word: check with :func:`without_words` first."""
    tokeniser = tokeniser_of(inputs_spec)
    cut = sum(_token_count(tokeniser, t) > tokeniser.max_length for t in texts)
    if cut:
        log.info(
            "%s utterances: %d of %d longer than %d tokens, cut to them, as training cut its utterances",
            what,
            cut,
            len(texts),
            tokeniser.max_length,
        )
    return tokeniser.encode(list(texts))


@dataclass
class TextRows:
    x: Tensor  # int64 [N, max_length] token ids, 0-padded, as training's token cache holds them
    y: Tensor | None  # int64 [N] class indices into ``classes`` (a support set), else None
    classes: list[str] | None  # the support set's distinct labels, sorted
    ids: list[str]
    texts: list[str]  # the utterances as the file has them


def _read_text_frame(path: Path, needed: list[str]):
    """The file's columns as text (an empty cell is ""): a CSV, a TSV (by suffix) or Parquet."""
    import pandas as pd

    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        from maml_cli.data.table_files import read_table

        frame, _ = read_table(str(path))
    else:
        try:
            frame = pd.read_csv(
                path, sep="\t" if ".tsv" in suffixes else ",", dtype=str, keep_default_na=False, encoding="utf-8"
            )
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MamlError(f"cannot read {path} as a CSV: {detail}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise MamlError(
            f"{path} lacks column(s) {', '.join(missing)}; this model reads utterances: columns "
            f"{', '.join(needed)} (optional {ID_COLUMN} names the rows; other columns are ignored)"
        )
    if len(frame) == 0:
        raise MamlError(f"{path} has no rows")
    return frame


def _as_text(values) -> list[str]:
    """Cells as strings; a missing cell (Parquet's null) as ""."""
    return ["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in values]


def read_text_rows(path: PathLike, inputs_spec: Mapping[str, Any], with_label: bool) -> TextRows:
    """Utterances of a CSV (TSV, Parquet) for a text model, tokenised by the checkpoint's own
    tokeniser (see the module's docstring for the rules); ``with_label``: a support set, whose
    ``label`` column gives the classes."""
    tokeniser_of(inputs_spec)  # one line if this model takes no text
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise MamlError(f"{path} {what}; give a CSV file with a {TEXT_COLUMN} column, one utterance a row")
    needed = [TEXT_COLUMN, *([LABEL_COLUMN] if with_label else [])]
    frame = _read_text_frame(path, needed)
    texts = _as_text(frame[TEXT_COLUMN])
    empty = without_words(texts)
    if empty:
        raise MamlError(
            f"{path}: column {TEXT_COLUMN} has no words in row(s) {_rows(empty)} (e.g. {texts[empty[0]]!r}; rows "
            "count from 1 after the header); fill or remove those rows"
        )
    y, classes = None, None
    if with_label:
        labels = [label.strip() for label in _as_text(frame[LABEL_COLUMN])]
        blank = [i for i, label in enumerate(labels) if not label]
        if blank:
            raise MamlError(
                f"{path}: column {LABEL_COLUMN} is empty in row(s) {_rows(blank)} (rows count from 1 after the "
                "header); give every support utterance its class"
            )
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise MamlError(
                f"{path}: the support set has one class ({classes[0]}) in column {LABEL_COLUMN}; a task needs at "
                "least 2 classes"
            )
        index = {c: i for i, c in enumerate(classes)}
        y = torch.tensor([index[label] for label in labels], dtype=torch.long)
    x = encode_utterances(texts, inputs_spec, "support" if with_label else "input")
    if ID_COLUMN in frame.columns:
        ids = [name if name.strip() else str(i + 1) for i, name in enumerate(_as_text(frame[ID_COLUMN]))]
    else:
        ids = [str(i + 1) for i in range(len(frame))]
    return TextRows(x, y, classes, ids, texts)


def read_support_text(path: PathLike, inputs_spec: Mapping[str, Any]) -> tuple[Tensor, Tensor, list[str]]:
    """A text model's support set: ``(token ids [K, max_length], class indices [K], classes)``
    from a CSV of ``text`` and ``label`` columns (classes: the distinct labels, sorted)."""
    rows = read_text_rows(path, inputs_spec, with_label=True)
    assert rows.y is not None and rows.classes is not None
    return rows.x, rows.y, rows.classes
