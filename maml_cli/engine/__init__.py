"""The engine: the training loop, evaluation, checkpoints and logging around an algorithm."""

from maml_cli.engine.trainer import Trainer

__all__ = ["Trainer"]
