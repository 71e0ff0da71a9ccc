"""N-way K-shot image classification episodes, sampled by indexing one uint8 tensor on the device.

Every image dataset (Omniglot, miniImageNet, CIFAR-FS, ...) is decoded once into an
:class:`ImageCache`: all images as one ``uint8 [N, C, H, W]`` tensor with a class label per image,
saved next to nothing else and reused on later runs. Episodes are then drawn without touching the
disk or decoding anything: pick ``ways`` classes, pick ``shots + query`` images of each, gather
them from the tensor, turn them to float, all as a handful of tensor operations on the training
device.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from maml_cli.data.tasks import TaskBatch
from maml_cli.errors import ConfigError
from maml_cli.storage import remove_interrupted_writes, save_verified, split_integrity

log = logging.getLogger("maml_cli")

_SPLIT_SEEDS = {"val": 1_000_003, "test": 2_000_003}
CACHE_FORMAT = 3  # 2: with an integrity digest; 3: Omniglot and arrays resized by torch (within 2 levels of 2)


def default_data_root() -> Path:
    """Where raw datasets are looked for: ``$MAML_DATA_ROOT``, else a folder in the user's cache."""
    env = os.environ.get("MAML_DATA_ROOT")
    return Path(env) if env else Path.home() / ".cache" / "maml-cli" / "data"


def default_cache_dir() -> Path:
    """Where decoded datasets are kept: ``$MAML_CACHE_DIR``, else a folder in the user's cache."""
    env = os.environ.get("MAML_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "maml-cli" / "cache"


@dataclass
class ImageCache:
    """A whole dataset decoded: ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]``
    indexing ``class_names``.

    Saved with an integrity digest (:mod:`maml_cli.storage`) that is checked on every load: a
    cache damaged on disk (``torch.load`` does not check its zip CRCs) is rebuilt with a warning
    naming it, never trained on. Caches of an older format (1: before digests; 2: before Omniglot and
    the pickled datasets were resized by tensor operations) are rebuilt once.
    """

    images: Tensor
    labels: Tensor
    class_names: list[str]

    def save(self, path: Path) -> None:
        state = {"format": CACHE_FORMAT, "images": self.images, "labels": self.labels, "class_names": self.class_names}
        save_verified(state, path, "choose another dataset.cache_dir (or set MAML_CACHE_DIR)")

    @staticmethod
    def load(path: Path) -> ImageCache | None:
        """The cache at ``path``, or None when it is missing, damaged or of another format."""
        if not path.is_file():
            return None
        try:
            state, verified = split_integrity(torch.load(path, map_location="cpu", weights_only=True))
            if state.get("format") != CACHE_FORMAT:
                log.info("image cache %s is of an older format; rebuilding it", path)
                return None
            if not verified:
                raise ValueError("its contents do not match the integrity digest written with it")
            return ImageCache(state["images"], state["labels"], list(state["class_names"]))
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            why = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            log.warning("image cache %s is damaged (%s); rebuilding it", path, why)
            return None

    @staticmethod
    def load_or_build(path: Path, build: Callable[[], ImageCache]) -> ImageCache:
        """Decode once with ``build`` and keep the result at ``path`` for every later run. Leftovers
        of a write that was killed in this cache dir are removed first."""
        remove_interrupted_writes(path.parent)
        cache = ImageCache.load(path)
        if cache is None:
            log.info("decoding images once into %s", path)
            cache = build()
            cache.save(path)  # a failure is one line naming the file (storage.WriteError)
        return cache


@dataclass
class SplitClasses:
    """The classes of one split: a label of the cache each, and a rotation in quarter turns
    (rotated copies of a class count as classes of their own, as in Omniglot's protocol)."""

    labels: Tensor
    rotations: Tensor

    @staticmethod
    def of(labels: Sequence[int], rotations: Sequence[int] | None = None) -> SplitClasses:
        labels_t = torch.as_tensor(list(labels), dtype=torch.long)
        rot = torch.zeros_like(labels_t) if rotations is None else torch.as_tensor(list(rotations))
        return SplitClasses(labels_t, rot.long())


def with_rotations(labels: Sequence[int]) -> SplitClasses:
    """Each class four times, turned by 0, 90, 180 and 270 degrees."""
    labels = list(labels)
    return SplitClasses.of([c for c in labels for _ in range(4)], [r for _ in labels for r in range(4)])


class FewShotImageTasks:
    """A distribution of ``ways``-way ``shots``-shot classification tasks over one split each.

    Training draws from ``train``; validation and ``maml-eval`` from fixed seeded sets of ``val``
    and ``test`` tasks with ``eval_shots``/``eval_query`` examples per class (default: as in
    training). Inputs are scaled to [0, 1], then standardised with ``mean``/``std`` if given.
    """

    metric_name = "accuracy"
    higher_is_better = True

    def __init__(
        self,
        cache: ImageCache,
        splits: dict[str, SplitClasses],
        ways: int = 5,
        shots: int = 1,
        query: int = 15,
        eval_shots: int | None = None,
        eval_query: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        name: str = "images",
        inverted: bool = False,
    ) -> None:
        self.ways, self.shots, self.query = ways, shots, query
        self.inverted = inverted  # the cache holds 255 - pixels (Omniglot: strokes bright)
        self.eval_shots = shots if eval_shots is None else eval_shots
        self.eval_query = query if eval_query is None else eval_query
        self.seed = seed
        self.device = torch.device(device)
        self.name = name
        self.images = cache.images.to(self.device)
        self.input_shape = tuple(cache.images.shape[1:])
        self.class_names = cache.class_names
        channels = self.input_shape[0]
        self._mean_std = (list(mean), list(std)) if mean is not None and std is not None else None
        self._mean = self._std = None
        if mean is not None and std is not None:
            self._mean = torch.tensor(list(mean), device=self.device).reshape(channels, 1, 1)
            self._std = torch.tensor(list(std), device=self.device).reshape(channels, 1, 1)
        self._tables = {split: self._class_table(cache.labels, classes) for split, classes in splits.items()}
        self._split_labels = {split: classes.labels for split, classes in splits.items()}  # for messages
        # Without rotated classes, episodes skip the rotation pass and its device syncs entirely.
        self._rotates = any(bool(classes.rotations.any()) for classes in splits.values())
        for split in ("train", "val", "test"):
            if split not in self._tables:
                raise ConfigError(f"dataset {name}: no {split} split was defined")
        self._check_sizes()

    def input_spec(self) -> dict:
        """What a deployed model needs to turn an image file into an input (kept in checkpoints):
        decode, convert to ``channels``, resize to ``size``, scale to [0, 1], invert if the
        training images were, then standardise with ``mean``/``std`` if any."""
        channels, size = self.input_shape[0], self.input_shape[-1]
        mean, std = self._mean_std if self._mean_std else (None, None)
        image = {"size": size, "channels": channels, "mean": mean, "std": std, "inverted": self.inverted}
        return {"problem": "classification", "input_shape": list(self.input_shape), "ways": self.ways, "image": image}

    # -- checks ------------------------------------------------------------------------------

    def _check_sizes(self) -> None:
        if self.ways < 2:
            raise ConfigError(f"dataset.ways must be >= 2 for classification, got {self.ways}")
        for split, (table, counts, _) in self._tables.items():
            per_task = self.shots + self.query if split == "train" else self.eval_shots + self.eval_query
            if table.shape[0] < self.ways:
                raise ConfigError(
                    f"dataset.ways={self.ways} but the {self.name} {split} split has only "
                    f"{table.shape[0]} classes; lower dataset.ways"
                )
            fewest = int(counts.min())
            if per_task > fewest:
                keys = "shots + query" if split == "train" else "eval_shots + eval_query"
                short = int((counts < per_task).sum())
                name = self.class_names[int(self._split_labels[split][int(counts.argmin())])]
                raise ConfigError(
                    f"dataset {keys} = {per_task} images per class, but {short} {self.name} {split} "
                    f"class(es) have fewer, e.g. class (folder) {name!r} has only {fewest}; lower "
                    "dataset.shots or dataset.query, or add images to that class"
                )

    def _class_table(self, labels: Tensor, classes: SplitClasses):
        """For each class of a split, the indices of its images (padded with 0) and their count."""
        order = torch.argsort(labels, stable=True)
        per_label = torch.bincount(labels, minlength=int(labels.max()) + 1)
        starts = torch.cumsum(per_label, 0) - per_label
        counts = per_label[classes.labels]
        if counts.numel() and int(counts.min()) == 0:
            empty = self.class_names[int(classes.labels[int(counts.argmin())])]
            raise ConfigError(f"dataset {self.name}: class (folder) {empty!r} has no images; add some or remove it")
        width = int(counts.max()) if counts.numel() else 0
        pos = torch.arange(width)
        flat = (starts[classes.labels, None] + pos).clamp(max=max(len(order) - 1, 0))
        table = torch.where(pos < counts[:, None], order[flat], torch.zeros_like(flat))
        dev = self.device
        return table.to(dev), counts.to(dev), classes.rotations.to(dev)

    # -- the task distribution interface -------------------------------------------------------

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(prediction, target)

    def metric(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Accuracy; NaN when the outputs are not finite (adaptation diverged), so that such a task
        is counted as diverged instead of scoring whatever ``argmax`` makes of NaN logits."""
        accuracy = (prediction.argmax(dim=-1) == target).float().mean()
        return torch.where(torch.isfinite(prediction).all(), accuracy, torch.nan)

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        picks = self._pick(self._tables["train"], num_tasks, self.shots + self.query, generator)
        return self._materialize(*picks, self.shots, self.query)

    def held_out(self, split: str, num_tasks: int, batch_size: int) -> Iterator[TaskBatch]:
        if split not in _SPLIT_SEEDS:
            raise ConfigError(f"unknown split {split!r}: use one of {sorted(_SPLIT_SEEDS)}")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.seed + _SPLIT_SEEDS[split])
        per_class = self.eval_shots + self.eval_query
        index, rotation = self._pick(self._tables[split], num_tasks, per_class, generator)
        for start in range(0, num_tasks, batch_size):
            stop = start + batch_size
            yield self._materialize(index[start:stop], rotation[start:stop], self.eval_shots, self.eval_query)

    # -- sampling ------------------------------------------------------------------------------

    def _pick(self, table_entry, num_tasks: int, per_class: int, generator: torch.Generator):
        """Image indices ``[T, ways, per_class]`` and rotations ``[T, ways]`` of random episodes."""
        table, counts, rotations = table_entry
        weights = torch.ones(num_tasks, table.shape[0], device=self.device)
        classes = torch.multinomial(weights, self.ways, replacement=False, generator=generator)
        noise = torch.rand(num_tasks, self.ways, table.shape[1], generator=generator, device=self.device)
        slot = torch.arange(table.shape[1], device=self.device)
        noise = noise.masked_fill(slot >= counts[classes][..., None], 2.0)  # never pick padding
        position = noise.argsort(dim=-1)[..., :per_class]
        return table[classes[..., None], position], rotations[classes]

    def _materialize(self, index: Tensor, rotation: Tensor, shots: int, query: int) -> TaskBatch:
        tasks, ways = index.shape[:2]
        x = self.images[index]  # [T, W, S+Q, C, H, W] uint8
        for quarter_turns in (1, 2, 3) if self._rotates else ():
            chosen = rotation == quarter_turns
            if bool(chosen.any()):
                x[chosen] = torch.rot90(x[chosen], quarter_turns, dims=(-2, -1))
        x = x.float().div_(255.0)
        if self._mean is not None:
            x = (x - self._mean) / self._std
        shape = self.input_shape
        labels = torch.arange(ways, device=self.device)
        return TaskBatch(
            support_x=x[:, :, :shots].reshape(tasks, ways * shots, *shape),
            support_y=labels.repeat_interleave(shots).expand(tasks, -1),
            query_x=x[:, :, shots:].reshape(tasks, ways * query, *shape),
            query_y=labels.repeat_interleave(query).expand(tasks, -1),
        )
