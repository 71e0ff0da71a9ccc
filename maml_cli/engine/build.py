"""From a run config to live objects: the task distribution, the model, the algorithm.

``maml-train`` and ``maml-eval`` both build through here, so a checkpoint's config rebuilds
exactly what trained it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from maml_cli.errors import ConfigError, MamlError


@dataclass
class Run:
    tasks: object  # a TaskDistribution
    algorithm: nn.Module  # e.g. MAML; holds the model as .model


def _instantiate(node: DictConfig, group: str, **kwargs):
    target = node.get("_target_", None)
    if not target:
        raise ConfigError(f"{group}._target_ is missing: name the class to build, e.g. {group}._target_=pkg.Class")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, MamlError):  # already says what to do (e.g. where the data is)
            raise cause from None
        detail = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        if "Error locating target" in str(exc) or isinstance(cause, (ImportError, AttributeError)):
            detail = f"cannot import {target!r} (is its module on the Python path?)"
        raise ConfigError(f"cannot build {group} from {group}._target_={target}: {detail}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build {group} from {group}._target_={target}: {exc}") from None


def build_run(cfg: DictConfig, device: torch.device) -> Run:
    """Build what ``cfg`` describes, on ``device``. The global RNG must already be seeded."""
    tasks = _instantiate(cfg.dataset, "dataset", seed=int(cfg.seed), device=device)
    model = _instantiate(cfg.model, "model")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={cfg.model._target_} built a {type(model).__name__}, not a torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model._target_={cfg.model._target_} has no trainable parameters to meta-learn")
    model.to(device)
    inner = OmegaConf.to_container(cfg.inner_loop, resolve=True, enum_to_str=True)
    algorithm = _instantiate(OmegaConf.create(inner), "inner_loop", model=model, loss=tasks.loss)
    algorithm.to(device)
    return Run(tasks=tasks, algorithm=algorithm)
