"""Configs saved in checkpoints by earlier versions of the toolkit, brought up to the current keys.

A checkpoint stores its run's resolved config as plain data. When a later version adds a key
(``trainer.num_threads``, ``inner_loop.grad_clip`` ...), that config lacks it, and Hydra's struct
mode would refuse ``maml-eval checkpoint=old.pt inner_loop.grad_clip=10`` as an unknown key. So the
groups that have a schema get the schema's defaults under the saved values: nothing saved changes,
and every key of the current version can be overridden.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from maml_cli.config.schema import INNER_LOOP_SCHEMAS, TrainerConfig


def _defaults(schema: type) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(schema), enum_to_str=True)  # type: ignore[return-value]


def _inner_loop_schema(target: Any) -> type | None:
    for schema in INNER_LOOP_SCHEMAS.values():
        if schema._target_ == target:  # each schema's default _target_ is its algorithm's class
            return schema
    return None


def upgrade_run_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the keys the current schemas add filled in by their defaults."""
    upgraded = dict(config)
    if isinstance(config.get("trainer"), dict):
        upgraded["trainer"] = {**_defaults(TrainerConfig), **config["trainer"]}
    inner = config.get("inner_loop")
    schema = _inner_loop_schema(inner.get("_target_")) if isinstance(inner, dict) else None
    if schema is not None:
        upgraded["inner_loop"] = {**_defaults(schema), **inner}
    return upgraded
