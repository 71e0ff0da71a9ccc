"""Thin Hydra entry points: ``maml-train`` and ``maml-eval``."""
