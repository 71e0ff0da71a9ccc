"""Task distributions: where few-shot episodes come from."""

from maml_cli.data.sinusoid import SinusoidTasks
from maml_cli.data.tasks import TaskBatch, TaskDistribution

__all__ = ["SinusoidTasks", "TaskBatch", "TaskDistribution"]
