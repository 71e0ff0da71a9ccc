"""Checkpoints and result files: written atomically with an integrity record, read as checked data.

Writing goes through :mod:`maml_cli.storage` (a temporary file renamed into place; a full disk or a
read-only dir is one line naming the file). Reading uses ``torch.load(weights_only=True)``: a
checkpoint is data, and unpickling arbitrary code from a file someone handed you is not something a
CLI should do. Then everything a caller relies on is checked, so any problem with the file is one
line naming it: the integrity digest (damage), the shape of every field, and the weights being
finite. A damaged checkpoint names the run's checkpoint to use instead (the other of best.pt and
last.pt, or a top-k member) when one verifies.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from maml_cli.errors import CheckpointError
from maml_cli.storage import atomic_write, remove_interrupted_writes, save_verified, split_integrity

#: 2: every checkpoint carries an integrity record (format 1 ones, from before, load unverified).
FORMAT_VERSION = 2
_RUN_DIR_HINT = "choose another hydra.run.dir"
_ANY_OF_OURS = "use a checkpoint written by maml-train, e.g. the run's best.pt or last.pt"
_NO_STAND_IN = "no other checkpoint of its run verifies; retrain, or use a copy from elsewhere"

#: What each field a caller reads must be: its types and their description (optional ones only if present).
_INTEGER, _DICT = ((int,), "an integer"), ((Mapping,), "a dict")
_REQUIRED = {"format_version": _INTEGER, "step": _INTEGER, "model": _DICT, "config": _DICT}
_OPTIONAL = {
    "optimizer": _DICT,
    "scheduler": _DICT,
    "rng": _DICT,
    "best": ((Mapping, type(None)), "a dict or null"),
    "last_val": ((Mapping, type(None)), "a dict or null"),
    "top": ((list,), "a list"),
    "history": ((list,), "a list"),
    "inputs": ((Mapping, type(None)), "a dict or null"),
}


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Atomically write a checkpoint dict (see :class:`~maml_cli.engine.trainer.Trainer`) with its
    integrity record."""
    save_verified(state, path, _RUN_DIR_HINT)


def _strict(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by ``None``: strict JSON has no NaN."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _strict(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_strict(value) for value in data]
    return data


def write_json(data: Any, path: str | Path, hint: str = _RUN_DIR_HINT) -> None:
    """Atomically write ``data`` as indented, strict JSON (NaN and infinities become ``null``; the
    diverged-task counts beside them say why). ``hint`` ends the error line if it cannot be written."""
    payload = (json.dumps(_strict(data), indent=2, sort_keys=False, allow_nan=False) + "\n").encode()
    atomic_write(Path(path), lambda handle: handle.write(payload), hint)


def remove_interrupted_checkpoint_writes(run_dir: str | Path) -> list[Path]:
    """Remove what a run killed mid-write left in ``run_dir``, ``checkpoints/`` and
    ``checkpoints/top/`` (``.last.pt.*.tmp`` and the like); call it when a run starts in the dir.
    Creates nothing; a file a live writer still holds is left alone."""
    run_dir = Path(run_dir)
    removed = []
    for directory in (run_dir, run_dir / "checkpoints", run_dir / "checkpoints" / "top"):
        removed += remove_interrupted_writes(directory)
    return removed


def _read(path: Path) -> tuple[Any, bool | None]:
    """``torch.load`` of ``path`` and its integrity verdict; raises what ``torch.load`` raises."""
    with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
        warnings.simplefilter("ignore")
        state = torch.load(path, map_location="cpu", weights_only=True)
    return split_integrity(state) if isinstance(state, dict) else (state, None)


def _verifies(path: Path) -> bool:
    try:
        _, ok = _read(path)
    except Exception:
        return False
    return ok is True


def _stand_in(path: Path) -> Path | None:
    """The first of the run's other checkpoints that verifies, to use instead of a damaged ``path``:
    the other of best.pt and last.pt beside it, then the top-k members, best first."""
    ckpt_dir = path.parent.parent if path.parent.name == "top" else path.parent
    pair = ("last.pt", "best.pt") if path.name == "best.pt" else ("best.pt", "last.pt")
    candidates = [ckpt_dir / name for name in pair]
    try:
        index = json.loads((ckpt_dir / "top" / "index.json").read_text())
        candidates += [ckpt_dir / "top" / str(entry["file"]) for entry in index["checkpoints"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    candidates += sorted((ckpt_dir / "top").glob("step_*.pt"))  # no index, or it is damaged too
    for candidate in candidates:
        if candidate.is_file() and candidate.resolve() != path.resolve() and _verifies(candidate):
            return candidate
    return None


def _use_instead(path: Path, otherwise: str) -> str:
    other = _stand_in(path)
    return f"use {other} instead" if other is not None else otherwise


def _kind(value: Any) -> str:
    return "a tensor" if isinstance(value, torch.Tensor) else f"{type(value).__name__} {str(value)[:40]!r}"


def _check_fields(path: Path, state: Any) -> None:
    """Every field a caller reads has the type it expects; anything else is one line naming it."""
    if not isinstance(state, dict) or any(key not in state for key in _REQUIRED):
        missing = [key for key in _REQUIRED if not isinstance(state, dict) or key not in state]
        raise CheckpointError(
            f"{path} is not a maml-cli checkpoint (it lacks {', '.join(missing)}); "
            "pass a checkpoint written by maml-train"
        )
    for key, (types, want) in {**_REQUIRED, **_OPTIONAL}.items():
        value = state.get(key)
        if key in state and (not isinstance(value, types) or isinstance(value, bool)):
            raise CheckpointError(
                f"checkpoint {path} is malformed: its {key!r} is {_kind(value)}, not {want}; "
                "use a checkpoint written by maml-train"
            )
    if state["step"] < 0:
        raise CheckpointError(
            f"checkpoint {path} is malformed: its step is {state['step']}; use one written by maml-train"
        )
    for name, value in state["model"].items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {path} is malformed: model entry {str(name)[:60]!r} is {_kind(value)}, not a tensor; "
                "use a checkpoint written by maml-train"
            )
    if any(not isinstance(key, str) for key in state["config"]):
        raise CheckpointError(f"checkpoint {path} is malformed: its config has keys that are not strings")


def _check_finite(path: Path, model: Mapping[str, torch.Tensor]) -> None:
    bad = [name for name, value in model.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise CheckpointError(
            f"checkpoint {path} holds NaN/inf weights in {bad[0]}{more} (saved from a diverged model; "
            f"it cannot be evaluated or resumed); {_use_instead(path, _NO_STAND_IN)}"
        )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a maml-cli checkpoint onto the CPU, checked; any problem is a one-line :class:`CheckpointError`.

    Checked: it is a readable PyTorch file of plain data, its integrity digest matches (checkpoints
    of format 1, written before digests existed, have none and load unverified), every field has
    its type, and the weights are finite. A damaged file's error names the run's checkpoint to use
    instead.
    """
    path = Path(path)
    if not path.is_file():
        hint = " (it is a directory)" if path.is_dir() else ""
        raise CheckpointError(
            f"checkpoint not found: {path}{hint}; pass the path of a .pt file written by "
            "maml-train, e.g. <run dir>/checkpoints/best.pt"
        )
    try:
        state, verified = _read(path)
    except Exception as exc:  # corrupted, truncated, or holds pickled code
        if "Weights only load failed" in str(exc) and "Unsupported" in str(exc):
            why = "it is corrupted or holds Python objects beyond tensors and plain data (never unpickled)"
        else:
            why = "it is not a readable PyTorch file (corrupted or truncated)"
        raise CheckpointError(f"cannot load checkpoint {path}: {why}; {_use_instead(path, _ANY_OF_OURS)}") from None
    damaged = verified is False or (
        verified is None
        and isinstance(state, dict)
        and _is_int(state.get("format_version"))
        and state["format_version"] >= 2
    )
    if damaged:
        raise CheckpointError(
            f"checkpoint {path} is damaged (its contents do not match the integrity digest written with it); "
            f"{_use_instead(path, _NO_STAND_IN)}"
        )
    _check_fields(path, state)
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer maml-cli (format {state['format_version']}, this "
            f"version reads {FORMAT_VERSION}); upgrade maml-cli"
        )
    _check_finite(path, state["model"])
    return state


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
