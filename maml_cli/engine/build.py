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
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from maml_cli.errors import ConfigError, MamlError
from maml_cli.models.selection import freeze_parameters

#: Keys of the ``model`` group that the toolkit reads itself; every other key is an argument of
#: the model's constructor. A user's model class never sees them.
MODEL_OPTIONS = ("batch_norm", "freeze", "weights_path")


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


def _check_inputs(model: nn.Module, input_shape, device: torch.device, target: str) -> None:
    """One forward pass of two zero inputs of the dataset's shape, so that a model built for other
    inputs (a one-input MLP on a table of 12 features) stops here with one line, not mid-training."""
    if input_shape is None:
        return
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    mode = model.training
    model.eval()  # reads running statistics, writes none; dropout off
    try:
        with torch.no_grad():
            model(torch.zeros(2, *input_shape, device=device, dtype=dtype))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"model._target_={target} cannot take the dataset's inputs (each of shape {list(input_shape)}): "
            f"{detail}; set the model's input size to match (e.g. model.in_features, model.in_channels, "
            "model.image_size)"
        ) from None
    finally:
        model.train(mode)


def build_model(cfg: DictConfig, device: torch.device, input_shape=None, initial_weights: bool = False) -> nn.Module:
    """The model ``cfg.model`` describes, on ``device``, checked against ``input_shape`` if given.

    With ``initial_weights`` the model starts from ``model.weights_path`` and ``trainer.init_from``
    when they are set: ``maml-train`` asks for it, while ``maml-eval``, deployment and resumed runs
    load a checkpoint over the model anyway (and the files may not be there any more).
    """
    options = {key: cfg.model.get(key) for key in MODEL_OPTIONS}
    try:
        resolved = OmegaConf.to_container(cfg.model, resolve=True)
    except OmegaConfBaseException as exc:
        target = cfg.model.get("_target_", "?")
        raise ConfigError(f"cannot build model from model._target_={target}: {str(exc).splitlines()[0]}") from None
    constructor = OmegaConf.create({k: v for k, v in resolved.items() if k not in MODEL_OPTIONS})
    model = _instantiate(constructor, "model")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={cfg.model._target_} built a {type(model).__name__}, not a torch.nn.Module")
    init_from = cfg.get("trainer", {}).get("init_from")
    if initial_weights and (options["weights_path"] or init_from):
        from maml_cli.engine.init_weights import load_initial_weights

        load_initial_weights(model, weights_path=options["weights_path"], init_from=init_from)
    freeze_parameters(model, options["freeze"])
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model._target_={cfg.model._target_} has no trainable parameters to meta-learn")
    model.to(device)
    _check_inputs(model, input_shape, device, cfg.model.get("_target_"))
    return model


def resolve_precision(cfg: DictConfig, device: torch.device) -> str:
    """``trainer.precision`` (fp32 for configs from before it existed), checked against ``device``.

    fp16 needs CUDA: PyTorch's CPU autocast has float16 kernels for few operations, and the point
    of fp16 (tensor cores) is a GPU's; on CPU bf16 is the reduced precision to use.
    """
    from maml_cli.algorithms.precision import PRECISIONS

    trainer = cfg.get("trainer") or {}
    precision = str(getattr(trainer.get("precision"), "value", trainer.get("precision") or "fp32"))
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"trainer.precision=fp16 is not supported on {device.type}: fp16 runs on CUDA devices only; "
            "use trainer.precision=bf16 (or fp32) here, or trainer.device=cuda on a machine with a GPU"
        )
    return precision


def build_algorithm(cfg: DictConfig, model: nn.Module, loss) -> nn.Module:
    """The algorithm ``cfg.inner_loop`` describes, meta-learning ``model`` with the task loss ``loss``.

    It runs its forward passes in ``trainer.precision``, the run's own when ``cfg`` comes from a
    checkpoint (``maml-eval``, deployment), so a model is scored and adapted as it was trained;
    ``maml-eval ... trainer.precision=fp32`` overrides it. fp32 is not passed on, so an algorithm
    class of a user's that takes no ``precision`` argument still builds.
    """
    inner = OmegaConf.to_container(cfg.inner_loop, resolve=True, enum_to_str=True)
    batch_norm = cfg.model.get("batch_norm") or "batch"
    device = next(model.parameters()).device
    options = {"batch_norm": batch_norm}
    precision = resolve_precision(cfg, device)
    if precision != "fp32":
        options["precision"] = precision
    algorithm = _instantiate(OmegaConf.create(inner), "inner_loop", model=model, loss=loss, **options)
    return algorithm.to(device)


def build_run(cfg: DictConfig, device: torch.device, initial_weights: bool = False) -> Run:
    """Build what ``cfg`` describes, on ``device``. The global RNG must already be seeded.
    ``initial_weights``: see :func:`build_model`."""
    tasks = _instantiate(cfg.dataset, "dataset", seed=int(cfg.seed), device=device)
    _check_family(cfg, tasks)
    model = build_model(cfg, device, getattr(tasks, "input_shape", None), initial_weights)
    return Run(tasks=tasks, algorithm=build_algorithm(cfg, model, tasks.loss))


def _check_family(cfg: DictConfig, tasks) -> None:
    """Reinforcement-learning tasks (``family = "rl"``) hold no labelled examples, and a
    supervised algorithm cannot adapt on them, nor an RL algorithm on examples. Checked from the
    algorithm's class, before the model is built (whose inputs would be the first to disagree)."""
    from hydra.utils import get_class

    task_family = getattr(tasks, "family", "supervised")
    try:
        algorithm_family = getattr(get_class(str(cfg.inner_loop._target_)), "family", "supervised")
    except Exception:  # an unknown class: instantiation says so with its own message
        return
    if task_family == algorithm_family:
        return
    dataset = getattr(tasks, "name", None) or str(cfg.dataset.get("_target_", "?")).rsplit(".", 1)[-1]
    if task_family == "rl":
        raise ConfigError(
            f"dataset={dataset} is a reinforcement-learning task distribution: use inner_loop=maml_rl "
            "and model=gaussian_mlp (or an experiment=maml_rl_* preset)"
        )
    raise ConfigError(
        f"inner_loop=maml_rl adapts a policy on episodes, not on the labelled examples of {dataset}: "
        "use dataset=nav2d, halfcheetah_vel or halfcheetah_dir, or a supervised inner_loop"
    )
