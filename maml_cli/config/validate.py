"""Checks that a type cannot express: ranges, and values that must agree with each other.

Run before anything is built or written, so a bad value fails in a second with a message that
names the key and says what would be valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from maml_cli.errors import ConfigError

_POSITIVE_INTS = (
    "dataset.shots",
    "dataset.query",
    "inner_loop.steps",
    "inner_loop.eval_steps",
    "trainer.max_steps",
    "trainer.meta_batch_size",
    "trainer.val_every",
    "trainer.val_tasks",
    "trainer.ckpt_every",
    "trainer.log_every",
)


def _get(cfg: Mapping[str, Any] | DictConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if node is None or part not in node:
            return None
        node = node[part]
    return node


def require_positive_int(value: Any, key: str, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")


def require_positive_float(value: Any, key: str, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (value >= 0 if allow_zero else value > 0) or value != value:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key} must be a number {bound}, got {value!r}")


def validate_run_config(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Check a training (or checkpointed) run config; raises :class:`ConfigError`."""
    episodic = _get(cfg, "dataset.rollouts") is not None  # RL tasks: no shots or queries
    for key in _POSITIVE_INTS:
        value = _get(cfg, key)
        if value is not None or (key in ("dataset.shots", "dataset.query") and not episodic and _get(cfg, "dataset")):
            require_positive_int(value, key)
    if episodic:
        require_positive_int(_get(cfg, "dataset.rollouts"), "dataset.rollouts")
        require_positive_int(_get(cfg, "dataset.horizon"), "dataset.horizon")
    require_positive_int(_get(cfg, "inner_loop.task_chunk"), "inner_loop.task_chunk", allow_zero=True)
    require_positive_float(_get(cfg, "inner_loop.lr"), "inner_loop.lr", allow_zero=True)
    require_positive_float(_get(cfg, "optimizer.lr"), "optimizer.lr")
    require_positive_float(_get(cfg, "optimizer.min_lr"), "optimizer.min_lr", allow_zero=True)
    require_positive_int(_get(cfg, "optimizer.warmup_steps"), "optimizer.warmup_steps", allow_zero=True)
    if _get(cfg, "trainer.keep_top_k") is not None:  # absent from older checkpoints' configs
        require_positive_int(_get(cfg, "trainer.keep_top_k"), "trainer.keep_top_k", allow_zero=True)
    threads = _get(cfg, "trainer.num_threads")
    if threads is not None:
        require_positive_int(threads, "trainer.num_threads")
    minutes = _get(cfg, "trainer.max_minutes")
    if minutes is not None:
        require_positive_float(minutes, "trainer.max_minutes")
    inner_clip = _get(cfg, "inner_loop.grad_clip")
    if inner_clip is not None:
        require_positive_float(inner_clip, "inner_loop.grad_clip")
    clip = _get(cfg, "trainer.grad_clip")
    if clip is not None:
        require_positive_float(clip, "trainer.grad_clip")
    _validate_trust_region_outer_loop(cfg)
    device = _get(cfg, "trainer.device")
    if device is not None and not (
        device in ("cpu", "cuda", "auto") or (isinstance(device, str) and device.startswith("cuda:"))
    ):
        raise ConfigError(f"trainer.device must be cpu, cuda, cuda:N or auto, got {device!r}")


def _validate_trust_region_outer_loop(cfg: DictConfig | Mapping[str, Any]) -> None:
    """``inner_loop.outer=trpo`` (MAML-RL) writes its accepted step as the meta-gradient, so the
    meta-optimizer must apply it as it is: plain SGD at rate 1, no schedule, no clipping."""
    if _get(cfg, "inner_loop.outer") != "trpo" or _get(cfg, "optimizer") is None:
        return
    if _get(cfg, "dataset.rollouts") is None:  # not RL tasks: the build says which inner_loop to use
        return
    target = str(_get(cfg, "optimizer._target_"))
    problems = []
    if target != "torch.optim.SGD":
        problems.append(f"optimizer._target_={target}")
    for key, want in (("lr", 1.0), ("momentum", 0.0), ("weight_decay", 0.0), ("warmup_steps", 0)):
        value = _get(cfg, f"optimizer.{key}")
        if value is not None and float(value) != want:
            problems.append(f"optimizer.{key}={value}")
    schedule = _get(cfg, "optimizer.schedule")
    if schedule is not None and str(getattr(schedule, "value", schedule)) != "constant":
        problems.append(f"optimizer.schedule={getattr(schedule, 'value', schedule)}")
    if _get(cfg, "trainer.grad_clip") is not None:
        problems.append(f"trainer.grad_clip={_get(cfg, 'trainer.grad_clip')}")
    if problems:
        raise ConfigError(
            f"inner_loop.outer=trpo writes TRPO's step as the meta-gradient, which {', '.join(problems)} would change; "
            "use optimizer=sgd optimizer.lr=1 optimizer.momentum=0 (as the RL presets do), or inner_loop.outer=pg"
        )


def validate_eval_config(eval_cfg: DictConfig | Mapping[str, Any]) -> None:
    require_positive_int(eval_cfg["episodes"], "eval.episodes")
    require_positive_int(eval_cfg["batch_size"], "eval.batch_size")
    require_positive_int(eval_cfg["ensemble_top_k"], "eval.ensemble_top_k")
    if eval_cfg["num_threads"] is not None:
        require_positive_int(eval_cfg["num_threads"], "eval.num_threads")
    if eval_cfg["steps"] is not None:
        require_positive_int(eval_cfg["steps"], "eval.steps")
    if eval_cfg["split"] not in ("val", "test"):
        raise ConfigError(f"eval.split must be val or test, got {eval_cfg['split']!r}")
