"""Deployment: adapt a meta-trained model to a new task, predict, save, export and serve.

A room of its own on top of the engine: it builds models and algorithms from a checkpoint's
config (:mod:`maml_cli.engine.build`) and never touches training.
"""

from maml_cli.deploy.model import AdaptedModel, MetaModel, load, load_adapted

__all__ = ["AdaptedModel", "MetaModel", "load", "load_adapted"]
