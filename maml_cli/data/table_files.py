"""Reading a user's table and encoding it as tensors, for :mod:`maml_cli.data.table`.

The file (CSV, or Parquet with the extra ``maml-cli[parquet]``) is read once:

- features are ``dataset.feature_columns`` (default: every column but the task, target and SMILES
  columns). Numeric and boolean columns are standardised; text columns, and numeric ones listed in
  ``categorical_columns``, are one-hot encoded. A text column whose cells are mostly (90%) numbers
  is refused as a numeric column with typos, and one with more than ``max_categories`` values in
  the meta-training tasks as an ID or free text. Means, standard deviations and vocabularies come
  from the meta-training tasks' rows only; a missing number becomes the mean (0 once standardised),
  a missing or unseen category all zeros. With ``smiles_column``, the features are the molecules'
  Morgan fingerprints (:mod:`maml_cli.data.molecules`) followed by any feature columns named;
  unreadable SMILES are skipped and counted, up to ``max_invalid_smiles`` of the rows.
- tasks are split into meta-training, validation and test tasks by ``train_tasks`` /
  ``val_tasks`` / ``test_tasks``, else by ``split_ratios`` of the sorted task names permuted with
  ``split_seed``.

What training learned of the features (columns, means and standard deviations, one-hot
vocabularies, fingerprint settings) is a :class:`TableEncoder`; :func:`encode_rows` is the one
way rows become features, used by training and by a deployed model on a user's CSV
(:mod:`maml_cli.deploy.inputs`), and the encoder travels in checkpoints (``TableTasks.input_spec``).

The result depends on the file and these keys alone (:data:`TABLE_KEYS`), so ``maml-eval``
rebuilds exactly the features a checkpoint was trained on. The last table prepared is kept in
memory: the model's width (the ``maml_cli.table_features`` resolver) and the task distribution
built next share one reading of the file.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from maml_cli.data.splits import cut_by_ratios
from maml_cli.errors import ConfigError, MamlError

log = logging.getLogger("maml_cli")

PROBLEMS = ("regression", "classification")
_NUMBERS_WITH_TYPOS = 0.9  # a text column with at least this share of numbers is a numeric one with typos


def listing(names: Sequence[object], limit: int = 12) -> str:
    shown = ", ".join(repr(str(n)) for n in list(names)[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _rows(index: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in list(index)[:limit])
    return f"row{'s' if len(index) > 1 else ''} {shown}{', ...' if len(index) > limit else ''}"


# -- reading ------------------------------------------------------------------------------------


def read_table(path: str | None, text_columns: Sequence[str] = ()) -> tuple[pd.DataFrame, Path]:
    """The table at ``path`` (``.parquet``/``.pq`` as Parquet, anything else as CSV, ``.tsv`` tab
    separated, compressed by suffix), with rows numbered from 0 below the header. A CSV's
    ``text_columns`` are read as text, not as the numbers their cells may look like ("007")."""
    if not path:
        raise ConfigError(
            "dataset.path is not set: point it at a CSV or Parquet file, e.g. experiment=table_regression "
            "dataset.path=my.csv dataset.task_column=COLUMN dataset.target_column=COLUMN"
        )
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise MamlError(f"table {file} not found; set dataset.path to a CSV or Parquet file")
    suffixes = [s.lower() for s in file.suffixes]
    try:
        if suffixes and suffixes[-1] in (".parquet", ".pq"):
            try:
                import pyarrow  # noqa: F401  (pandas' Parquet engine)
            except ImportError:
                raise ConfigError(f"reading Parquet ({file}) needs pyarrow: pip install 'maml-cli[parquet]'") from None
            frame = pd.read_parquet(file)
        else:
            text = {str(c): str for c in text_columns} or None
            frame = pd.read_csv(file, sep="\t" if ".tsv" in suffixes else ",", low_memory=False, dtype=text)
    except MamlError:
        raise
    except Exception as exc:  # parser errors, bad encodings, damaged Parquet
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise MamlError(f"cannot read table {file}: {detail}") from None
    if frame.empty:
        raise MamlError(f"table {file} has no rows")
    frame.columns = [str(c) for c in frame.columns]
    return frame.reset_index(drop=True), file


def _check_columns(frame: pd.DataFrame, file: Path, named: dict[str, list[str]]) -> None:
    for key, columns in named.items():
        for column in columns:
            if column not in frame.columns:
                raise ConfigError(
                    f"dataset.{key} names {column!r}, which is not a column of {file}; its columns are "
                    f"{listing(frame.columns, 40)}"
                )


# -- tasks, targets, splits ----------------------------------------------------------------------


def _task_ids(frame: pd.DataFrame, column: str, file: Path) -> tuple[np.ndarray, list[str]]:
    values = frame[column]
    empty = np.flatnonzero(values.isna().to_numpy())
    if len(empty):
        raise ConfigError(
            f"dataset.task_column {column!r} is empty in {len(empty)} rows of {file} ({_rows(empty)}, "
            "counted from 0 below the header); fill or drop them"
        )
    codes, names = pd.factorize(values.astype(str), sort=True)
    names = [str(n) for n in names]
    if len(names) < 3:
        raise ConfigError(
            f"dataset.task_column {column!r} of {file} has {len(names)} task(s) ({listing(names)}); "
            "meta-learning needs many tasks, at least one each to meta-train, validate and test on: "
            "name the column that tells the tasks apart (a customer, a sensor, an assay ...)"
        )
    return codes.astype(np.int64), names


def _targets(frame: pd.DataFrame, column: str, problem: str, task_names, task_of_row, file: Path):
    values = frame[column]
    empty = np.flatnonzero(values.isna().to_numpy())
    if len(empty):
        tasks = sorted({task_names[t] for t in task_of_row[empty]})
        raise ConfigError(
            f"dataset.target_column {column!r} is empty (NaN) in {len(empty)} rows of {file} ({_rows(empty)}, "
            f"counted from 0 below the header; task(s) {listing(tasks, 5)}); fill or drop them"
        )
    if problem == "regression":
        numbers = pd.to_numeric(values, errors="coerce")
        bad = np.flatnonzero(numbers.isna().to_numpy() | ~np.isfinite(numbers.to_numpy(dtype="float64")))
        if len(bad):
            raise ConfigError(
                f"dataset.target_column {column!r} of {file} is not a number in {len(bad)} rows "
                f"({_rows(bad)}: {values.iloc[bad[0]]!r}); fix them, or set dataset.problem=classification "
                "for class labels"
            )
        return torch.tensor(numbers.to_numpy(dtype="float32")), []
    codes, classes = pd.factorize(values, sort=True)
    return torch.tensor(codes, dtype=torch.long), list(classes)


def split_tasks(names, train_tasks, val_tasks, test_tasks, split_ratios, split_seed: int) -> dict[str, list[str]]:
    """Task names of each split: the given lists, else ``split_ratios`` of the sorted names permuted
    with ``split_seed``."""
    given = {"train": train_tasks, "val": val_tasks, "test": test_tasks}
    if any(tasks is not None for tasks in given.values()):
        unset = [f"dataset.{split}_tasks" for split, tasks in given.items() if not tasks]
        if unset:
            raise ConfigError(
                f"{', '.join(unset)} must be set too: list the tasks of every split, or of none and let "
                "dataset.split_ratios split them"
            )
        splits = {split: [str(t) for t in tasks] for split, tasks in given.items()}
        known, seen = set(names), {}
        for split, tasks in splits.items():
            for task in tasks:
                if task not in known:
                    raise ConfigError(
                        f"dataset.{split}_tasks names {task!r}, not a task of the table; its tasks are {listing(names)}"
                    )
                if task in seen and seen[task] != split:
                    raise ConfigError(f"task {task!r} is in both dataset.{seen[task]}_tasks and dataset.{split}_tasks")
                seen[task] = split
        left = len(names) - len(seen)
        if left:
            log.info(
                "table: %d of %d tasks are in none of dataset.train/val/test_tasks and are not used", left, len(names)
            )
        return splits
    splits = cut_by_ratios(names, split_ratios, split_seed)
    count, ratios = len(names), [float(r) for r in split_ratios]
    for split, tasks in splits.items():
        if not tasks:
            raise ConfigError(
                f"dataset.split_ratios={ratios} leave no {split} task of the table's {count}; change the "
                "ratios, list the tasks (dataset.train_tasks/val_tasks/test_tasks), or add tasks"
            )
    return splits


# -- features ------------------------------------------------------------------------------------


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)


def _refuse_numbers_with_typos(values: pd.Series, column: str, file: Path) -> None:
    filled = values.dropna()
    parsed = pd.to_numeric(filled, errors="coerce")
    if len(filled) and parsed.notna().mean() >= _NUMBERS_WITH_TYPOS:
        bad = parsed.index[parsed.isna()][:3]
        examples = ", ".join(f"{values[i]!r} in row {i}" for i in bad)
        raise ConfigError(
            f"feature column {column!r} of {file} holds numbers but also text ({examples}), so it would be "
            "one-hot encoded as categories: fix or empty those cells to use it as a number, list it in "
            "dataset.categorical_columns to one-hot encode it, or leave it out of dataset.feature_columns"
        )


def _kind(values: pd.Series) -> str:
    """How a column's cells become category names: ``bool``, ``int``, ``float32``/``float64`` or ``text``."""
    if pd.api.types.is_bool_dtype(values):
        return "bool"
    if pd.api.types.is_integer_dtype(values):
        return "int"
    if pd.api.types.is_float_dtype(values):
        return "float32" if values.dtype == np.float32 else "float64"
    return "text"


def _category_name(value: Any, kind: str) -> Any:
    """The name of one cell's category as training wrote it (``str`` of the value as read), whatever
    type another reading of the file gave the cell: 3.0 or "3" in an integer column is "3", "true"
    in a boolean one "True". A cell that does not fit the kind keeps its text (an unseen category)."""
    if pd.isna(value):
        return np.nan
    try:
        if kind == "bool":
            if isinstance(value, str):
                text = value.strip().lower()
                return {"true": "True", "false": "False", "1": "True", "0": "False"}.get(text, value)
            return str(bool(value))
        if kind == "int":
            if isinstance(value, (int, np.integer)):
                return str(int(value))
            number = float(value)
            return str(int(number)) if number.is_integer() else str(value)
        if kind in ("float32", "float64"):
            return str(float(np.dtype(kind).type(float(value))))
    except (TypeError, ValueError, OverflowError):
        return str(value)
    return str(value)


def category_names(values: pd.Series, kind: str) -> pd.Series:
    """Each cell's category name (NaN where the cell is empty)."""
    return values.map(lambda v: _category_name(v, kind)).astype(object)


@dataclass
class TableEncoder:
    """How raw rows become a model's features, with statistics from the meta-training tasks: the
    Morgan fingerprint of ``smiles_column`` (if any), then the ``numeric`` columns standardised with
    ``mean``/``std`` (a missing number is the mean: 0), then each ``categorical`` column one-hot over
    its ``categories`` (a missing or unseen category: all zeros). Kept in checkpoints
    (:meth:`to_spec`), so a deployed model encodes rows exactly as training did."""

    columns: list[str]  # the feature columns as the user named them (SMILES column not included)
    numeric: list[str]
    mean: list[float]
    std: list[float]
    numeric_kinds: list[str]  # each numeric column's type in training (bool, int, float32, float64)
    categorical: list[str]
    categories: list[list[str]]  # the one-hot order of each categorical column
    categorical_kinds: list[str]
    smiles_column: str | None = None
    fingerprint_radius: int = 2
    fingerprint_bits: int = 2048

    @property
    def feature_names(self) -> list[str]:
        radius, bits = self.fingerprint_radius, range(self.fingerprint_bits if self.smiles_column else 0)
        bits = [f"morgan{radius}_{i}" for i in bits]
        onehot = [f"{c}={v}" for c, vocabulary in zip(self.categorical, self.categories) for v in vocabulary]
        return bits + self.numeric + onehot

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    def to_spec(self) -> dict[str, Any]:
        """Plain data (JSON, ``torch.load(weights_only=True)``)."""
        return {
            "feature_columns": list(self.columns),
            "numeric": [
                {"column": c, "mean": float(m), "std": float(s), "kind": k}
                for c, m, s, k in zip(self.numeric, self.mean, self.std, self.numeric_kinds)
            ],
            "categorical": [
                {"column": c, "categories": list(v), "kind": k}
                for c, v, k in zip(self.categorical, self.categories, self.categorical_kinds)
            ],
            "smiles": None
            if not self.smiles_column
            else {"column": self.smiles_column, "radius": self.fingerprint_radius, "bits": self.fingerprint_bits},
            "missing": {"number": "the meta-training mean (0 once standardised)", "category": "all zeros"},
            "unseen_category": "all zeros",
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TableEncoder:
        smiles = spec.get("smiles") or {}
        return cls(
            columns=[str(c) for c in spec["feature_columns"]],
            numeric=[str(n["column"]) for n in spec["numeric"]],
            mean=[float(n["mean"]) for n in spec["numeric"]],
            std=[float(n["std"]) for n in spec["numeric"]],
            numeric_kinds=[str(n["kind"]) for n in spec["numeric"]],
            categorical=[str(c["column"]) for c in spec["categorical"]],
            categories=[[str(v) for v in c["categories"]] for c in spec["categorical"]],
            categorical_kinds=[str(c["kind"]) for c in spec["categorical"]],
            smiles_column=smiles.get("column"),
            fingerprint_radius=int(smiles.get("radius", 2)),
            fingerprint_bits=int(smiles.get("bits", 2048)),
        )


def fit_encoder(frame, columns, categorical, train_rows: np.ndarray, max_categories: int, file: Path, smiles=None):
    """The :class:`TableEncoder` of ``columns`` (numeric and boolean ones standardised, text ones and
    those in ``categorical`` one-hot encoded), with statistics and vocabularies from the rows in
    ``train_rows`` only; ``smiles`` is ``(column, radius, bits)`` or None."""
    numeric = [c for c in columns if c not in categorical and _is_numeric(frame[c])]
    for column in columns:
        if column not in numeric and column not in categorical:
            _refuse_numbers_with_typos(frame[column], column, file)
    mean = std = np.zeros(0)
    if numeric:
        train = _numbers(frame, numeric)[train_rows]
        seen = ~np.isnan(train)
        count = seen.sum(axis=0)
        mean = np.where(count > 0, np.nansum(train, axis=0) / np.maximum(count, 1), 0.0)
        var = np.where(count > 0, np.nansum((train - mean) ** 2, axis=0) / np.maximum(count, 1), 0.0)
        std = np.where(var > 0, np.sqrt(var), 1.0)
    others = [c for c in columns if c not in numeric]
    kinds = [_kind(frame[c]) for c in others]
    vocabularies = []
    for column, kind in zip(others, kinds):
        vocabulary = sorted(category_names(frame[column], kind).iloc[train_rows].dropna().unique())
        if len(vocabulary) > max_categories:
            raise ConfigError(
                f"feature column {column!r} of {file} has {len(vocabulary)} distinct values in the meta-training "
                f"tasks, more than dataset.max_categories={max_categories}: an ID or free text? Leave it out of "
                "dataset.feature_columns, or raise dataset.max_categories to one-hot encode it anyway"
            )
        vocabularies.append([str(v) for v in vocabulary])
    column, radius, bits = smiles if smiles else (None, 2, 2048)
    return TableEncoder(
        columns=list(columns),
        numeric=numeric,
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        numeric_kinds=[_kind(frame[c]) for c in numeric],
        categorical=others,
        categories=vocabularies,
        categorical_kinds=kinds,
        smiles_column=column,
        fingerprint_radius=int(radius),
        fingerprint_bits=int(bits),
    )


def _numbers(frame: pd.DataFrame, numeric: list[str]) -> np.ndarray:
    """float64 ``[N, len(numeric)]``, NaN where a number is missing or not finite."""
    values = frame[numeric].to_numpy(dtype="float64", copy=True)
    values[~np.isfinite(values)] = np.nan
    return values


@dataclass
class Encoded:
    dense: Tensor  # float32 [N, D]: standardised numbers, then one-hot categories
    missing_numbers: np.ndarray  # bool [N, len(numeric)]: filled with the mean
    unseen_categories: np.ndarray  # bool [N, len(categorical)]: a value none of the training rows had


def encode_dense(frame: pd.DataFrame, encoder: TableEncoder) -> Encoded:
    """The numeric and one-hot part of the features of ``frame``'s rows (its numeric columns read
    as numbers, of the kinds training had)."""
    blocks = [np.zeros((len(frame), 0), dtype=np.float32)]
    missing = np.zeros((len(frame), len(encoder.numeric)), dtype=bool)
    if encoder.numeric:
        values = _numbers(frame, encoder.numeric)
        missing = np.isnan(values)
        standardised = (values - np.asarray(encoder.mean)) / np.asarray(encoder.std)
        standardised[missing] = 0.0  # the meta-training mean
        blocks.append(standardised.astype(np.float32))
    unseen = np.zeros((len(frame), len(encoder.categorical)), dtype=bool)
    for i, (column, vocabulary, kind) in enumerate(
        zip(encoder.categorical, encoder.categories, encoder.categorical_kinds)
    ):
        names = category_names(frame[column], kind)
        code_of = {value: k for k, value in enumerate(vocabulary)}
        codes = names.map(code_of).fillna(-1).to_numpy(dtype=np.int64)  # -1: missing, or unseen in training
        onehot = np.zeros((len(frame), len(vocabulary)), dtype=np.float32)
        known = codes >= 0
        onehot[np.flatnonzero(known), codes[known]] = 1.0
        unseen[:, i] = ~known & names.notna().to_numpy()
        blocks.append(onehot)
    return Encoded(torch.from_numpy(np.concatenate(blocks, axis=1)), missing, unseen)


def join_features(fingerprints: Tensor | None, dense: Tensor) -> Tensor:
    """A row's features: its molecule's fingerprint bits (0/1 floats) first, then the dense part."""
    return dense if fingerprints is None else torch.cat([fingerprints.float(), dense], dim=-1)


def encode_rows(frame: pd.DataFrame, encoder: TableEncoder) -> Tensor:
    """float32 ``[N, features]`` of ``frame``'s rows, as training encoded them; every SMILES must be
    one RDKit reads (:func:`~maml_cli.data.molecules.morgan_fingerprints` says which are not)."""
    fingerprints = None
    if encoder.smiles_column:
        from maml_cli.data.molecules import morgan_fingerprints

        table, index = morgan_fingerprints(
            frame[encoder.smiles_column].tolist(), encoder.fingerprint_radius, encoder.fingerprint_bits
        )
        if (index < 0).any():
            raise ValueError("encode_rows needs readable SMILES in every row")
        fingerprints = torch.from_numpy(table)[torch.from_numpy(index)]
    return join_features(fingerprints, encode_dense(frame, encoder).dense)


@dataclass
class PreparedTable:
    """A table read and encoded: CPU tensors with one entry per kept row."""

    source: Path
    dense: Tensor  # float32 [N, D]: standardised numbers, then one-hot categories
    fingerprints: Tensor | None  # uint8 [M, B]: one per distinct molecule
    molecule: Tensor | None  # int64 [N]: each row's molecule in fingerprints
    targets: Tensor  # float32 [N] (regression) or int64 [N] class ids (classification)
    classes: list[Any]  # the value of each class id
    task_of_row: Tensor  # int64 [N]
    task_names: list[str]
    splits: dict[str, list[int]]  # task ids of each split
    encoder: TableEncoder

    @property
    def feature_names(self) -> list[str]:
        return self.encoder.feature_names

    @property
    def num_features(self) -> int:
        bits = 0 if self.fingerprints is None else self.fingerprints.shape[1]
        return self.dense.shape[1] + bits


def _drop_invalid_smiles(frame, column: str, radius: int, bits: int, max_invalid: float, file: Path):
    from maml_cli.data.molecules import morgan_fingerprints

    fingerprints, index = morgan_fingerprints(frame[column].tolist(), radius, bits)
    bad = np.flatnonzero(index < 0)
    if len(bad) > max_invalid * len(frame):
        examples = ", ".join(f"{frame[column].iloc[i]!r} in row {i}" for i in bad[:3])
        raise ConfigError(
            f"RDKit cannot read {len(bad)} of the {len(frame)} SMILES in column {column!r} of {file} ({examples}), "
            f"more than dataset.max_invalid_smiles={max_invalid:g} of them; is it the SMILES column? Fix the "
            "strings, or raise dataset.max_invalid_smiles to skip them"
        )
    if len(bad):
        log.info("table %s: skipped %d rows whose SMILES RDKit cannot read (%s)", file.name, len(bad), _rows(bad))
    keep = index >= 0
    return frame[keep].reset_index(drop=True), torch.from_numpy(fingerprints), torch.from_numpy(index[keep])


def _prepare(
    path=None,
    task_column=None,
    target_column=None,
    feature_columns=None,
    categorical_columns=(),
    problem="regression",
    train_tasks=None,
    val_tasks=None,
    test_tasks=None,
    split_ratios=(0.64, 0.16, 0.2),
    split_seed=0,
    max_categories=50,
    smiles_column=None,
    fingerprint_radius=2,
    fingerprint_bits=2048,
    max_invalid_smiles=0.1,
) -> PreparedTable:
    if problem not in PROBLEMS:
        raise ConfigError(f"dataset.problem must be one of {', '.join(PROBLEMS)}, got {problem!r}")
    frame, file = read_table(path)
    for key, value in (("task_column", task_column), ("target_column", target_column)):
        if not value:
            raise ConfigError(
                f"dataset.{key} is not set: name a column of {file}; its columns are {listing(frame.columns, 40)}"
            )
    special = [task_column, target_column, *([smiles_column] if smiles_column else [])]
    if feature_columns is None:
        feature_columns = [] if smiles_column else [c for c in frame.columns if c not in special]
    features, categorical = [str(c) for c in feature_columns], [str(c) for c in categorical_columns or ()]
    _check_columns(
        frame,
        file,
        {
            "task_column": [task_column],
            "target_column": [target_column],
            "smiles_column": [smiles_column] if smiles_column else [],
            "feature_columns": features,
            "categorical_columns": categorical,
        },
    )
    clash = [c for c in features if c in special]
    if clash:
        raise ConfigError(f"dataset.feature_columns names {clash[0]!r}, which is the task, target or SMILES column")
    if not features and not smiles_column:
        raise ConfigError(
            f"no feature columns: {file} has only the task and target columns; add some, or set dataset.smiles_column"
        )
    fingerprints = molecule = None
    if smiles_column:
        frame, fingerprints, molecule = _drop_invalid_smiles(
            frame, smiles_column, int(fingerprint_radius), int(fingerprint_bits), float(max_invalid_smiles), file
        )
    task_of_row, task_names = _task_ids(frame, task_column, file)
    targets, classes = _targets(frame, target_column, problem, task_names, task_of_row, file)
    names = split_tasks(task_names, train_tasks, val_tasks, test_tasks, split_ratios, split_seed)
    ids = {name: i for i, name in enumerate(task_names)}
    splits = {split: sorted(ids[name] for name in tasks) for split, tasks in names.items()}
    train_rows = np.flatnonzero(np.isin(task_of_row, splits["train"]))
    smiles = (smiles_column, int(fingerprint_radius), int(fingerprint_bits)) if smiles_column else None
    encoder = fit_encoder(frame, features, set(categorical), train_rows, int(max_categories), file, smiles)
    encoded = encode_dense(frame, encoder)
    if encoded.missing_numbers.any():
        counts = encoded.missing_numbers.sum(axis=0)
        log.info(
            "table %s: %d missing numbers (most in %r) are taken as the meta-training tasks' mean",
            file.name,
            int(counts.sum()),
            encoder.numeric[int(counts.argmax())],
        )
    return PreparedTable(
        file,
        encoded.dense,
        fingerprints,
        molecule,
        targets,
        classes,
        torch.from_numpy(task_of_row),
        task_names,
        splits,
        encoder,
    )


#: The ``dataset`` keys that decide the encoded table (and with it the model's input width).
TABLE_KEYS = tuple(inspect.signature(_prepare).parameters)
_TABLE_DEFAULTS = {k: p.default for k, p in inspect.signature(_prepare).parameters.items()}
_prepared: dict[str, PreparedTable] = {}  # the last table prepared, by its key


def _plain(value: Any) -> Any:
    """Lists for any sequence (Hydra passes ListConfig, the resolver lists, code tuples)."""
    if value is None or isinstance(value, (str, bytes, int, float)):
        return value
    return [_plain(v) for v in value]


def prepare_table(**keys: Any) -> PreparedTable:
    """The table the ``dataset`` keys in :data:`TABLE_KEYS` describe, read and encoded; the last
    one is kept, keyed by those keys and the file's size and modification time."""
    keys = {**_TABLE_DEFAULTS, **{k: _plain(v) for k, v in keys.items()}}  # the same key from config or code
    path = keys.get("path")
    stat = None
    if path and Path(path).expanduser().is_file():
        info = Path(path).expanduser().resolve().stat()
        stat = (str(Path(path).expanduser().resolve()), info.st_size, info.st_mtime_ns)
    key = json.dumps([sorted(keys.items()), stat], default=str)
    if key not in _prepared:
        prepared = _prepare(**keys)
        _prepared.clear()
        _prepared[key] = prepared
    return _prepared[key]


def feature_width(dataset: Any) -> int:
    """``${maml_cli.table_features:${dataset}}``: the number of features of the table ``dataset``
    (a ``dataset`` config node) describes."""
    from omegaconf import DictConfig, OmegaConf

    node = OmegaConf.to_container(dataset, resolve=True) if isinstance(dataset, DictConfig) else dict(dataset)
    return prepare_table(**{k: node[k] for k in TABLE_KEYS if k in node}).num_features
