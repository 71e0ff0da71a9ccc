"""Schemas of the ``dataset`` config group: one dataclass per task distribution.

Each YAML file in ``configs/dataset/`` names its schema in its ``defaults`` list (the keys of
``DATASET_SCHEMAS``), so its keys and types are checked at composition. ``_target_`` is the
function or class that builds the distribution; every other key is one of its arguments
(``seed`` and ``device`` are passed by the engine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from omegaconf import MISSING, OmegaConf


@dataclass
class DatasetConfig:
    """Keys every task distribution has."""

    _target_: str = MISSING
    # Optional only for the RL tasks, whose data are episodes (dataset.rollouts); every other
    # dataset must set them (maml_cli.config.validate).
    shots: int | None = 10  # support examples per task (per class, for classification)
    query: int | None = 10  # query examples per task (per class, for classification)


@dataclass
class SinusoidConfig(DatasetConfig):
    _target_: str = "maml_cli.data.sinusoid.SinusoidTasks"
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    frequency: tuple[float, float] = (1.0, 1.0)  # w of A sin(w x - phase); Meta-SGD's paper: [0.8, 1.2]
    eval_shots: int | None = None  # support points of validation/test tasks (None = shots)
    eval_query: int | None = None  # query points of validation/test tasks (None = query)


@dataclass
class ImageDatasetConfig(DatasetConfig):
    """N-way K-shot image classification (see :mod:`maml_cli.data.images`)."""

    ways: int = 5
    shots: int = 1
    query: int = 15
    eval_shots: int | None = None  # support per class at validation/test (None = shots)
    eval_query: int | None = None  # query per class at validation/test (None = query)
    root: str | None = None  # where the raw data is; None = $MAML_DATA_ROOT or ~/.cache/maml-cli/data
    cache_dir: str | None = None  # decoded tensors; None = $MAML_CACHE_DIR or ~/.cache/maml-cli/cache
    download: bool = False
    image_size: int = 28
    channels: int = 1


@dataclass
class OmniglotConfig(ImageDatasetConfig):
    _target_: str = "maml_cli.data.omniglot.omniglot_tasks"
    split: str = "maml"  # maml (seeded 1200/423 characters) or vinyals (the split lists)
    split_dir: str | None = None  # vinyals lists; None = <omniglot dir>/splits/vinyals
    split_seed: int = 0  # the maml split's permutation, apart from the run's seed
    val_characters: int = 100  # carved from the 1200 meta-training characters
    rotations: bool = True  # 90/180/270-degree turns as extra classes


@dataclass
class MiniImageNetConfig(ImageDatasetConfig):
    _target_: str = "maml_cli.data.miniimagenet.miniimagenet_tasks"
    image_size: int = 84
    channels: int = 3  # 3 = RGB, 1 = grayscale
    split_dir: str | None = None  # Ravi CSVs for an images/ folder; None = <root>/miniimagenet/splits/ravi


@dataclass
class TieredImageNetConfig(ImageDatasetConfig):
    _target_: str = "maml_cli.data.tieredimagenet.tieredimagenet_tasks"
    image_size: int = 84
    channels: int = 3


@dataclass
class CifarFSConfig(ImageDatasetConfig):
    _target_: str = "maml_cli.data.cifar.cifar_fs_tasks"
    image_size: int = 32
    channels: int = 3
    split_dir: str | None = None  # JSON class lists; None = <root>/cifar100/splits/cifar-fs


@dataclass
class FC100Config(CifarFSConfig):
    _target_: str = "maml_cli.data.cifar.fc100_tasks"
    split_dir: str | None = None  # JSON superclass lists; None = <root>/cifar100/splits/fc100


@dataclass
class CUBConfig(ImageDatasetConfig):
    _target_: str = "maml_cli.data.cub.cub_tasks"
    image_size: int = 84
    channels: int = 3
    split_dir: str | None = None  # JSON class-folder lists; None = <root>/cub/splits


@dataclass
class ImageFolderConfig(ImageDatasetConfig):
    """A folder with one sub-folder of images per class; ``root`` and ``download`` are unused."""

    _target_: str = "maml_cli.data.image_folder.image_folder_tasks"
    path: str | None = None  # the folder of class folders (required)
    image_size: int = 84
    channels: int = 3  # 3 = RGB, 1 = grayscale
    train_classes: list[str] | None = None  # class folder names; all three lists, or none
    val_classes: list[str] | None = None
    test_classes: list[str] | None = None
    split_dir: str | None = None  # train.txt/val.txt/test.txt, one folder name a line
    split_ratios: list[float] = field(default_factory=lambda: [0.64, 0.16, 0.20])  # when no lists are given
    split_seed: int = 0  # the seeded permutation of classes that split_ratios cuts


@dataclass
class TableConfig(DatasetConfig):
    """Few-shot tasks from a CSV or Parquet table, one per value of a column (see :mod:`maml_cli.data.table`)."""

    _target_: str = "maml_cli.data.table.TableTasks"
    path: str | None = None  # the CSV or Parquet file (required)
    task_column: str | None = None  # one task per value: a customer, a sensor, an assay ... (required)
    target_column: str | None = None  # what to predict (required)
    feature_columns: list[str] | None = None  # None = every other column (with smiles_column: none)
    categorical_columns: list[str] = field(default_factory=list)  # numeric codes to one-hot (text always is)
    problem: str = "regression"  # regression (MSE) or classification (classes within a task)
    metric: str | None = None  # regression: mse; classification: accuracy, roc_auc or delta_auprc (None = first)
    ways: int = 2  # classification: classes per episode, drawn from the task's classes
    shots: int = 5
    query: int = 10
    eval_shots: int | None = None  # support at validation/test (None = shots)
    eval_query: int | None = None  # query at validation/test (None = query)
    train_tasks: list[str] | None = None  # task names; all three lists, or none
    val_tasks: list[str] | None = None
    test_tasks: list[str] | None = None
    split_ratios: list[float] = field(default_factory=lambda: [0.64, 0.16, 0.20])  # when no lists are given
    split_seed: int = 0  # the seeded permutation of task names that split_ratios cuts
    max_categories: int = 50  # a text column with more values in the meta-training tasks is refused
    smiles_column: str | None = None  # molecules: Morgan fingerprints as features (needs maml-cli[chem])
    fingerprint_radius: int = 2
    fingerprint_bits: int = 2048
    max_invalid_smiles: float = 0.1  # unreadable SMILES are skipped up to this fraction, an error beyond


@dataclass
class Clinc150Config(DatasetConfig):
    """CLINC150 intents as N-way K-shot text episodes (see :mod:`maml_cli.data.clinc150`)."""

    _target_: str = "maml_cli.data.clinc150.clinc150_tasks"
    ways: int = 5
    shots: int = 1
    query: int = 15
    eval_shots: int | None = None  # support per intent at validation/test (None = shots)
    eval_query: int | None = None  # query per intent at validation/test (None = query)
    root: str | None = None  # the folder with clinc150/; None = $MAML_DATA_ROOT or ~/.cache/maml-cli/data
    cache_dir: str | None = None  # tokenised tensors; None = $MAML_CACHE_DIR or ~/.cache/maml-cli/cache
    split: str = "intent"  # intent (seeded 50/50/50 intents) or domain (whole domains held out)
    split_sizes: list[int] | None = None  # intents (split=intent) or domains (split=domain); None = 50/50/50 or 4/3/3
    split_seed: int = 0  # the split's permutation, apart from the run's seed
    min_count: int = 2  # meta-training words seen fewer times are spelled by hashed n-grams
    max_vocab: int = 2000  # word ids; model.vocab_size = 1 + max_vocab + hash_buckets
    hash_buckets: int = 1024  # hashed character n-gram ids for words outside the vocabulary
    ngrams: list[int] = field(default_factory=lambda: [3])  # character n-gram sizes
    max_length: int = 32  # tokens per utterance (padded / cut)


@dataclass
class RLTasksConfig(DatasetConfig):
    """Reinforcement-learning tasks (:mod:`maml_cli.rl.tasks`): a task is a goal; its data are
    episodes collected by the policy being adapted, so ``shots`` and ``query`` do not apply."""

    shots: int | None = None  # not used: see rollouts
    query: int | None = None  # not used: see rollouts
    rollouts: int = 20  # episodes per task for each inner step and for the outer objective (the paper's K)
    horizon: int = 100  # steps per episode
    observation_dim: int = 2  # the environment's sizes, which the policy is built from (checked)
    action_dim: int = 2


@dataclass
class Nav2DConfig(RLTasksConfig):
    _target_: str = "maml_cli.rl.tasks.nav2d_tasks"
    goal_range: tuple[float, float] = (-0.5, 0.5)  # goals uniform in this square
    max_action: float = 0.1  # velocity commands are clipped to [-max_action, max_action]


@dataclass
class HalfCheetahConfig(RLTasksConfig):
    _target_: str = "maml_cli.rl.tasks.halfcheetah_tasks"
    task: str = "velocity"  # velocity (goal speed U[0, 2]) or direction (+1 or -1)
    horizon: int = 200
    observation_dim: int = 17
    action_dim: int = 6


DATASET_SCHEMAS: dict[str, type] = {
    "sinusoid_schema": SinusoidConfig,
    "omniglot_schema": OmniglotConfig,
    "miniimagenet_schema": MiniImageNetConfig,
    "tieredimagenet_schema": TieredImageNetConfig,
    "cifar_fs_schema": CifarFSConfig,
    "fc100_schema": FC100Config,
    "cub_schema": CUBConfig,
    "image_folder_schema": ImageFolderConfig,
    "table_schema": TableConfig,
    "clinc150_schema": Clinc150Config,
    "nav2d_schema": Nav2DConfig,
    "halfcheetah_schema": HalfCheetahConfig,
}


def _table_features(dataset) -> int:
    from maml_cli.data.table_files import feature_width  # pandas and torch only when a table is used

    return feature_width(dataset)


# ``model.in_features: ${maml_cli.table_features:${dataset}}`` in the table presets: the width of the
# table's encoded features, known once the file is read. Registered here, with the schemas, because
# every entry point loads them before a config is resolved.
if not OmegaConf.has_resolver("maml_cli.table_features"):
    OmegaConf.register_new_resolver("maml_cli.table_features", _table_features)


def _text_vocab_size(max_vocab: int, hash_buckets: int) -> int:
    """As :func:`maml_cli.data.text.vocab_size` (padding, words, n-gram buckets), without importing torch."""
    return 1 + int(max_vocab) + int(hash_buckets)


# ``model.vocab_size: ${maml_cli.text_vocab_size:${dataset.max_vocab},${dataset.hash_buckets}}`` in the
# text models' configs: the embedding rows the tokeniser's id layout needs, from the settings alone.
if not OmegaConf.has_resolver("maml_cli.text_vocab_size"):
    OmegaConf.register_new_resolver("maml_cli.text_vocab_size", _text_vocab_size)
