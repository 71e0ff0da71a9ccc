"""Resume that cannot drift: ``trainer.resume=auto`` continues a run dir's run with that run's config.

Hydra composes ``train.yaml``'s defaults plus the command line, which for a resumed run is not the
run's config: a run started with ``trainer.meta_batch_size=5`` would continue with 25. So when
``trainer.resume=auto`` finds the run dir's ``last.pt``, the config comes from the checkpoint
(which holds the run's resolved config), and an override given at resume that differs from it is

- applied when every key it changes is in :data:`ALLOWED` (how long to run, how often to log and
  save, where and with how many threads: nothing that changes what the run computes), or when
  ``trainer.resume_override=true`` is given;
- otherwise refused with one line that lists the differences.

What was applied is logged and kept in ``.hydra/resumed/<time>/resume.json`` beside the config
Hydra composed for that segment: :func:`prepare_argv` points ``hydra.output_subdir`` there before
Hydra starts, so the run's own ``.hydra/config.yaml`` is never overwritten.
"""

from __future__ import annotations

import copy
import datetime
import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from maml_cli.cli import run_start
from maml_cli.config.compat import fill_new_keys
from maml_cli.engine.checkpoint import load_checkpoint, write_json
from maml_cli.errors import ConfigError

log = logging.getLogger("maml_cli")

#: Keys a resumed run may change without ``trainer.resume_override=true``.
ALLOWED = frozenset(
    {
        "trainer.max_steps",
        "trainer.max_minutes",
        "trainer.progress",
        "trainer.log_every",
        "trainer.ckpt_every",
        "trainer.figures",
        "trainer.device",
        "trainer.num_threads",
        "trainer.distributed_timeout_s",
    }
)
#: Keys that say how to resume rather than what the run is.
_RESUME_KEYS = ("trainer.resume",)
OVERRIDE_FLAG = "trainer.resume_override"
_MISSING = "<absent>"

#: Set by :func:`prepare_argv` before Hydra starts, read by :func:`resumed_config` in the job.
_plan: dict[str, Any] = {}


def prepare_argv(argv: list[str]) -> list[str]:
    """Take ``trainer.resume_override`` off the command line (Hydra does not know the key) and,
    when a single run resumes its run dir's ``last.pt``, give the segment its own ``.hydra`` subdir."""
    flags = [a for a in argv if a.lstrip("+").partition("=")[0] == OVERRIDE_FLAG]
    rest = [a for a in argv if a not in flags]
    value = run_start.argument(flags, OVERRIDE_FLAG)
    if value is not None and value.lower() not in ("true", "false"):
        raise ConfigError(f"{OVERRIDE_FLAG} must be true or false, got {value!r}")
    _plan.clear()
    _plan["override"] = (value or "").lower() == "true"
    run_dir = run_start.explicit_run_dir(rest)
    if run_start.argument(rest, "trainer.resume") != "auto" or run_dir is None:
        return rest
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        return rest
    _plan["checkpoint"] = last
    if run_start.argument(rest, "hydra.output_subdir") is None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        _plan["subdir"] = run_dir / ".hydra" / "resumed" / stamp
        rest.append(f"hydra.output_subdir=.hydra/resumed/{stamp}")
    return rest


def _overridden_keys(overrides: list[str]) -> list[str]:
    """The config keys the command line set (a group choice such as ``optimizer=sgd`` sets its node)."""
    keys = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key not in _RESUME_KEYS:
            keys.append(key)
    return keys


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= _leaves(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return {prefix: value}


def _differences(old: Any, new: Any, prefix: str) -> dict[str, tuple[Any, Any]]:
    """Leaf keys under ``prefix`` whose values differ: ``{key: (checkpoint's, command line's)}``."""
    a, b = _leaves(old, prefix), _leaves(new, prefix)
    return {k: (a.get(k, _MISSING), b.get(k, _MISSING)) for k in {**a, **b} if a.get(k, _MISSING) != b.get(k, _MISSING)}


def _get(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    if value is _MISSING:
        tree.pop(leaf, None)
    else:
        tree[leaf] = copy.deepcopy(value)


def _show(value: Any) -> str:
    return value if value is _MISSING else repr(value)


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The config a job runs with: ``cfg`` itself, or for ``trainer.resume=auto`` in a run dir with a
    ``last.pt``, that checkpoint's config with the allowed overrides of this command line."""
    checkpoint = _plan.get("checkpoint")
    if checkpoint is None or cfg.trainer.resume != "auto":
        return cfg
    state = load_checkpoint(checkpoint)
    saved = copy.deepcopy(state["config"])
    composed = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    drift: dict[str, tuple[Any, Any]] = {}
    for key in _overridden_keys(list(HydraConfig.get().overrides.task)):
        if _get(composed, key) is _MISSING and "." not in key and key not in composed:
            # A preset such as experiment=NAME sets keys all over the config: compare all of them.
            drift |= {k: d for k, d in _differences(saved, composed, "").items() if not k.startswith(_RESUME_KEYS)}
        else:
            drift |= _differences(_get(saved, key), _get(composed, key), key)
    refused = {k: d for k, d in drift.items() if k not in ALLOWED}
    listing = ", ".join(f"{k}: {_show(old)} -> {_show(new)}" for k, (old, new) in sorted(drift.items()))
    if refused and not _plan.get("override"):
        shown = ", ".join(f"{k}: {_show(o)} -> {_show(n)}" for k, (o, n) in sorted(refused.items())[:8])
        more = f" and {len(refused) - 8} more" if len(refused) > 8 else ""
        _forget_segment_record()
        raise ConfigError(
            f"trainer.resume=auto continues {checkpoint} with the config it was trained with, and these "
            f"overrides differ from it: {shown}{more}; drop them, or add {OVERRIDE_FLAG}=true to apply them"
        )
    for key, (_, new) in drift.items():
        target = key
        # A changed class (e.g. optimizer=sgd): its node is taken whole, never mixed with the old one.
        parent = key.rsplit(".", 1)[0] if "." in key else None
        if parent and _get(saved, f"{parent}._target_") != _get(composed, f"{parent}._target_"):
            target, new = parent, _get(composed, parent)
        _set(saved, target, new)
    fill_new_keys(saved, composed)
    saved["trainer"]["resume"] = cfg.trainer.resume
    if drift:
        log.warning("resumed at step %d with changed config: %s", int(state["step"]), listing)
    _record(checkpoint, int(state["step"]), drift)
    resumed = OmegaConf.create(saved)
    OmegaConf.set_struct(resumed, True)
    return resumed


def _record(checkpoint: Path, step: int, drift: dict[str, tuple[Any, Any]]) -> None:
    subdir = _plan.get("subdir")
    if subdir is None:
        return
    changed = {k: {"checkpoint": old, "now": new} for k, (old, new) in sorted(drift.items())}
    changed = {k: {w: (None if v is _MISSING else v) for w, v in d.items()} for k, d in changed.items()}
    write_json({"checkpoint": str(checkpoint), "step": step, "changed": changed}, subdir / "resume.json")


def _forget_segment_record() -> None:
    """A refused resume leaves no ``.hydra/resumed/<time>/`` behind (Hydra wrote only its own yaml)."""
    subdir = _plan.get("subdir")
    if subdir is None or not subdir.is_dir():
        return
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (subdir / name).unlink(missing_ok=True)
    try:
        subdir.rmdir()
        subdir.parent.rmdir()  # only when no earlier segment is recorded there
    except OSError:
        pass
