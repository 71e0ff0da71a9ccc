"""Configs saved in checkpoints by earlier versions of the toolkit, brought up to the current keys.

A checkpoint stores its run's resolved config as plain data. When a later version adds a key
(``trainer.num_threads``, ``inner_loop.grad_clip`` ...), that config lacks it, and Hydra's struct
mode would refuse ``maml-eval checkpoint=old.pt inner_loop.grad_clip=10`` as an unknown key. So the
groups that have a schema get the schema's defaults under the saved values: nothing saved changes,
and every key of the current version can be overridden.
"""

from __future__ import annotations

import copy
from typing import Any

from omegaconf import OmegaConf

from maml_cli.config.schema import INNER_LOOP_SCHEMAS, TrainerConfig


def fill_new_keys(saved: dict[str, Any], newer: dict[str, Any]) -> None:
    """Give ``saved`` (in place) the keys ``newer`` has and it lacks, recursively, but never mix two
    classes' arguments: a node whose ``_target_`` differs keeps its own keys alone."""
    if saved.get("_target_", newer.get("_target_")) != newer.get("_target_"):
        return
    for key, value in newer.items():
        if key not in saved:
            saved[key] = copy.deepcopy(value)
        elif isinstance(saved[key], dict) and isinstance(value, dict):
            fill_new_keys(saved[key], value)


def _defaults(schema: type) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(schema), enum_to_str=True)  # type: ignore[return-value]


def _inner_loop_schema(target: Any) -> type | None:
    for schema in INNER_LOOP_SCHEMAS.values():
        if schema._target_ == target:  # each schema's default _target_ is its algorithm's class
            return schema
    return None


def upgrade_run_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the keys the current schemas add filled in by their defaults."""
    upgraded = copy.deepcopy(config)
    if isinstance(upgraded.get("trainer"), dict):
        fill_new_keys(upgraded["trainer"], _defaults(TrainerConfig))
    inner = upgraded.get("inner_loop")
    schema = _inner_loop_schema(inner.get("_target_")) if isinstance(inner, dict) else None
    if schema is not None:
        fill_new_keys(inner, _defaults(schema))
    return upgraded
