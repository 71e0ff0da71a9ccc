"""Few-shot tasks from a user's table: one task per value of a column (a customer, a sensor, a
patient, an assay), meta-trained on with ``maml-train experiment=table_regression
dataset.path=my.csv dataset.task_column=site dataset.target_column=y``.

How the file becomes tensors (features, standardisation, one-hot categories, fingerprints, the
split of tasks) is :mod:`maml_cli.data.table_files`. Episodes then are:

- regression: ``shots`` support and ``query`` query rows of one task; loss and metric MSE.
- classification: ``ways`` of the task's classes, ``shots`` + ``query`` rows of each, labelled
  0..ways-1 in the order of the class values, so in a binary task label 1 is the larger value
  (1, True): the class that ROC-AUC and ΔAUPRC score as positive. The loss is cross-entropy; the
  metric accuracy, or for binary tasks the query set's ROC-AUC or ΔAUPRC (FS-Mol's metric:
  average precision minus the share of positives).

Tasks (or, within a task, classes) with too few rows for an episode are left out, and a log line
says how many. The model needs the feature count before training, and it is known only once the
file is read: presets set ``model.in_features: ${maml_cli.table_features:${dataset}}``, a resolver
registered with the schemas (:mod:`maml_cli.config.datasets`) that calls
:func:`~maml_cli.data.table_files.feature_width`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from maml_cli.data.table_files import PROBLEMS, join_features, listing, prepare_table
from maml_cli.data.tasks import TaskBatch
from maml_cli.errors import ConfigError

log = logging.getLogger("maml_cli")

_SPLIT_SEEDS = {"val": 1_000_003, "test": 2_000_003}
SPLITS = ("train", "val", "test")
#: The metrics of each kind of problem; the first is the default.
METRICS = {"regression": ("mse",), "classification": ("accuracy", "roc_auc", "delta_auprc")}
_CHUNK = 100  # held-out episodes are drawn this many at a time, whatever the batch size


# -- metrics --------------------------------------------------------------------------------------


def roc_auc(scores: Tensor, positive: Tensor) -> Tensor:
    """Area under the ROC curve by the Mann-Whitney U statistic: with ``r_i`` the rank of score
    ``i`` among all (1-based, ties sharing their average rank), ``AUC = (sum of the positives'
    ranks - P (P + 1) / 2) / (P N)``, the chance that a random positive scores above a random
    negative, ties counting half. Pairwise counts keep it free of sorting and branches (``vmap``
    safe); NaN when a class is absent."""
    s = scores.double()
    pos = positive.to(s.dtype)
    below = (s[None, :] < s[:, None]).to(s.dtype).sum(dim=1)
    tied = (s[None, :] == s[:, None]).to(s.dtype).sum(dim=1)
    ranks = below + (tied + 1) / 2
    n_pos = pos.sum()
    n_neg = pos.numel() - n_pos
    return (((ranks * pos).sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).to(scores.dtype)


def average_precision(scores: Tensor, positive: Tensor) -> Tensor:
    """Average precision (area under the precision-recall curve, as scikit-learn computes it):
    the mean over positives of the precision among the examples scored at least as high."""
    s = scores.double()
    pos = positive.to(s.dtype)
    at_or_above = (s[None, :] >= s[:, None]).to(s.dtype)  # [i, j]: j scores at least as high as i
    precision = (at_or_above * pos[None, :]).sum(dim=1) / at_or_above.sum(dim=1)
    return ((precision * pos).sum() / pos.sum()).to(scores.dtype)


def _finite_or_nan(prediction: Tensor, value: Tensor) -> Tensor:
    """NaN when the outputs are not finite (adaptation diverged): the engine counts such a task as
    diverged instead of scoring whatever comparisons make of NaN."""
    return torch.where(torch.isfinite(prediction).all(), value, torch.nan)


def _plain_value(value):
    """A class value as plain Python (numpy's ``int64(1)`` as ``1``), for checkpoints and JSON."""
    return value.item() if hasattr(value, "item") else value


# -- the task distribution ------------------------------------------------------------------------


class TableTasks:
    """Few-shot regression or classification tasks, one per value of a table's task column (see
    the module's docstring for the rules); the ``dataset`` keys of ``configs/dataset/table.yaml``
    are its arguments."""

    def __init__(
        self,
        path: str | None = None,
        task_column: str | None = None,
        target_column: str | None = None,
        feature_columns: Sequence[str] | None = None,
        categorical_columns: Sequence[str] = (),
        problem: str = "regression",
        metric: str | None = None,
        ways: int = 2,
        shots: int = 5,
        query: int = 10,
        eval_shots: int | None = None,
        eval_query: int | None = None,
        train_tasks: Sequence[str] | None = None,
        val_tasks: Sequence[str] | None = None,
        test_tasks: Sequence[str] | None = None,
        split_ratios: Sequence[float] = (0.64, 0.16, 0.2),
        split_seed: int = 0,
        max_categories: int = 50,
        smiles_column: str | None = None,
        fingerprint_radius: int = 2,
        fingerprint_bits: int = 2048,
        max_invalid_smiles: float = 0.1,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if problem not in PROBLEMS:
            raise ConfigError(f"dataset.problem must be one of {', '.join(PROBLEMS)}, got {problem!r}")
        self.problem = problem
        self.metric_name = metric or METRICS[problem][0]
        if self.metric_name not in METRICS[problem]:
            raise ConfigError(f"dataset.metric for {problem} is one of {', '.join(METRICS[problem])}, got {metric!r}")
        self.higher_is_better = self.metric_name != "mse"
        self.classification = problem == "classification"
        if self.classification and ways < 2:
            raise ConfigError(f"dataset.ways must be >= 2 for classification, got {ways}")
        if self.metric_name != "accuracy" and self.classification and ways != 2:
            raise ConfigError(f"dataset.metric={self.metric_name} scores binary tasks: set dataset.ways=2, got {ways}")
        self.ways = ways if self.classification else None
        self.shots, self.query = shots, query
        self.eval_shots = shots if eval_shots is None else eval_shots
        self.eval_query = query if eval_query is None else eval_query
        for key, value in (("eval_shots", self.eval_shots), ("eval_query", self.eval_query)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"dataset.{key} must be an integer >= 1, got {value!r}")
        self.seed = seed
        self.device = torch.device(device)
        table = prepare_table(
            path=path,
            task_column=task_column,
            target_column=target_column,
            feature_columns=feature_columns,
            categorical_columns=categorical_columns,
            problem=problem,
            train_tasks=train_tasks,
            val_tasks=val_tasks,
            test_tasks=test_tasks,
            split_ratios=split_ratios,
            split_seed=split_seed,
            max_categories=max_categories,
            smiles_column=smiles_column,
            fingerprint_radius=fingerprint_radius,
            fingerprint_bits=fingerprint_bits,
            max_invalid_smiles=max_invalid_smiles,
        )
        self.source, self.task_names, self.feature_names = table.source, table.task_names, table.feature_names
        self.classes = table.classes
        self.encoder = table.encoder
        self.task_column, self.target_column = str(task_column), str(target_column)
        self.num_features = table.num_features
        self.input_shape = (self.num_features,)
        dev = self.device
        self._dense = table.dense.to(dev)
        self._fingerprints = None if table.fingerprints is None else table.fingerprints.to(dev)
        self._molecule = None if table.molecule is None else table.molecule.to(dev)
        self._targets = table.targets.to(dev)
        # Rows grouped by task (regression) or by (task, class): group g's rows are
        # _order[_starts[g] : _starts[g] + _counts[g]].
        num_classes = max(len(table.classes), 1)
        group_of_row = table.task_of_row * num_classes + (table.targets if self.classification else 0)
        counts = torch.bincount(group_of_row, minlength=len(table.task_names) * num_classes)
        self._order = torch.argsort(group_of_row, stable=True).to(dev)
        self._starts = (torch.cumsum(counts, 0) - counts).to(dev)
        self._counts = counts.to(dev)
        per_task = counts.reshape(len(table.task_names), num_classes)
        self._splits = {}
        for split in SPLITS:
            need = self.shots + self.query if split == "train" else self.eval_shots + self.eval_query
            self._splits[split] = self._eligible(split, table.splits[split], per_task, need, num_classes)
        log.info(
            "table %s: %d rows, %d tasks (%s), %d features, %s",
            self.source.name,
            len(table.targets),
            len(table.task_names),
            " / ".join(f"{len(self._splits[s][1])} {s}" for s in SPLITS),
            self.num_features,
            f"{len(self.classes)} classes" if self.classification else "regression",
        )

    def _eligible(self, split: str, tasks: list[int], per_task: Tensor, need: int, num_classes: int):
        """The groups of each task of ``split`` that can fill an episode: ``[T, C]`` group ids (padded)
        and how many of each row are real; tasks that cannot are left out, with a log line."""
        groups_per_task = self.ways if self.classification else 1
        keep, lists = [], []
        for task in tasks:
            usable = torch.nonzero(per_task[task] >= need).flatten().tolist()
            if len(usable) >= groups_per_task:
                keep.append(task)
                lists.append([task * num_classes + c for c in usable])
        keys = "shots + query" if split == "train" else "eval_shots + eval_query"
        what = f"{need} rows ({keys})"
        if self.classification:
            what = f"{self.ways} classes with {need} rows each ({keys} per class; dataset.ways={self.ways})"
        skipped = [self.task_names[t] for t in tasks if t not in keep]
        if skipped:
            log.info(
                "table %s: skipped %d of %d %s tasks with fewer than %s: %s",
                self.source.name,
                len(skipped),
                len(tasks),
                split,
                what,
                listing(skipped, 5),
            )
        if not keep:
            raise ConfigError(
                f"none of the {len(tasks)} {split} tasks of {self.source} has {what}; lower dataset.shots or "
                "dataset.query (or eval_shots/eval_query), or give the split bigger tasks"
            )
        width = max(len(groups) for groups in lists)
        padded = torch.tensor([groups + [groups[0]] * (width - len(groups)) for groups in lists], dtype=torch.long)
        return padded.to(self.device), torch.tensor([len(g) for g in lists], device=self.device)

    def input_spec(self) -> dict:
        """What a deployed model needs to encode a user's rows exactly as training did (kept in
        checkpoints; read by :func:`maml_cli.deploy.inputs.read_csv`): the encoder's columns and
        statistics (:meth:`~maml_cli.data.table_files.TableEncoder.to_spec`), the target column and,
        for classification, the class values in label order."""
        table = {
            **self.encoder.to_spec(),
            "task_column": self.task_column,
            "target_column": self.target_column,
            "classes": [_plain_value(c) for c in self.classes] if self.classification else None,
        }
        return {"problem": self.problem, "input_shape": [self.num_features], "ways": self.ways, "table": table}

    # -- the task distribution interface -------------------------------------------------------

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        if self.classification:
            return F.cross_entropy(prediction, target)
        return F.mse_loss(prediction, target)

    def metric(self, prediction: Tensor, target: Tensor) -> Tensor:
        if self.metric_name == "mse":
            return F.mse_loss(prediction, target)
        if self.metric_name == "accuracy":
            value = (prediction.argmax(dim=-1) == target).to(prediction.dtype).mean()
        else:
            score = prediction[..., 1] - prediction[..., 0]  # the log-odds of label 1
            positive = target == 1
            if self.metric_name == "roc_auc":
                value = roc_auc(score, positive)
            else:  # ΔAUPRC (FS-Mol): average precision above that of a random ranking
                value = average_precision(score, positive) - positive.to(score.dtype).mean()
        return _finite_or_nan(prediction, value)

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        rows = self._draw("train", num_tasks, self.shots + self.query, generator)
        return self._materialize(rows, self.shots, self.query)

    def held_out(self, split: str, num_tasks: int, batch_size: int) -> Iterator[TaskBatch]:
        if split not in _SPLIT_SEEDS:
            raise ConfigError(f"unknown split {split!r}: use one of {sorted(_SPLIT_SEEDS)}")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.seed + _SPLIT_SEEDS[split])
        per_group = self.eval_shots + self.eval_query
        rows = torch.cat(
            [self._draw(split, min(_CHUNK, num_tasks - s), per_group, generator) for s in range(0, num_tasks, _CHUNK)]
        )
        for start in range(0, num_tasks, batch_size):
            yield self._materialize(rows[start : start + batch_size], self.eval_shots, self.eval_query)

    # -- sampling ------------------------------------------------------------------------------

    def _draw(self, split: str, num_tasks: int, per_group: int, generator: torch.Generator) -> Tensor:
        """Row indices ``[T, G, per_group]`` of random episodes: a task each, ``G`` of its classes
        (in class order; ``G = 1`` for regression), ``per_group`` rows of each."""
        groups_of, num_groups = self._splits[split]
        dev = self.device
        task = torch.randint(len(num_groups), (num_tasks,), generator=generator, device=dev)
        if self.classification:
            noise = torch.rand(num_tasks, groups_of.shape[1], generator=generator, device=dev)
            slot = torch.arange(groups_of.shape[1], device=dev)
            noise = noise.masked_fill(slot >= num_groups[task, None], -1.0)  # never a padding slot
            picked = noise.topk(self.ways, dim=1).indices.sort(dim=1).values
            groups = groups_of[task].gather(1, picked)
        else:
            groups = groups_of[task]
        counts = self._counts[groups]
        width = int(counts.max())
        noise = torch.rand(*groups.shape, width, generator=generator, device=dev)
        noise = noise.masked_fill(torch.arange(width, device=dev) >= counts[..., None], -1.0)
        position = noise.topk(per_group, dim=-1).indices
        return self._order[self._starts[groups][..., None] + position]

    def _features(self, rows: Tensor) -> Tensor:
        fingerprints = None if self._fingerprints is None else self._fingerprints[self._molecule[rows]]
        return join_features(fingerprints, self._dense[rows])

    def _materialize(self, rows: Tensor, shots: int, query: int) -> TaskBatch:
        tasks, groups = rows.shape[:2]
        x = self._features(rows)  # [T, G, S+Q, F]
        width = x.shape[-1]
        support_x = x[:, :, :shots].reshape(tasks, groups * shots, width)
        query_x = x[:, :, shots:].reshape(tasks, groups * query, width)
        if self.classification:
            labels = torch.arange(groups, device=self.device)
            support_y = labels.repeat_interleave(shots).expand(tasks, -1)
            query_y = labels.repeat_interleave(query).expand(tasks, -1)
        else:
            y = self._targets[rows]
            support_y = y[:, :, :shots].reshape(tasks, shots, 1)
            query_y = y[:, :, shots:].reshape(tasks, query, 1)
        return TaskBatch(support_x, support_y, query_x, query_y)
