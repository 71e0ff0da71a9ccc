"""Checkpoints and result files: written atomically, read as data.

A write goes to a temporary file in the same directory, is flushed to disk, then renamed over
the target, so a crash or a full disk never leaves a half-written ``last.pt`` behind. Reading uses
``torch.load(weights_only=True)``: a checkpoint is data, and unpickling arbitrary code from a file
someone handed you is not something a CLI should do.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from maml_cli.errors import CheckpointError

FORMAT_VERSION = 1
_REQUIRED_KEYS = ("format_version", "step", "model", "config")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The permissions an ordinary ``open()`` would give a new file: 0o666 less the user's umask.
#: (``mkstemp`` makes its files 0o600 whatever the umask, which would hide results from a group.)
_FILE_MODE = 0o666 & ~_current_umask()


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fchmod(handle.fileno(), _FILE_MODE)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Atomically write a checkpoint dict (see :class:`~maml_cli.engine.trainer.Trainer`)."""
    _atomic_write(Path(path), lambda handle: torch.save(state, handle))


def _strict(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by ``None``: strict JSON has no NaN."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _strict(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_strict(value) for value in data]
    return data


def write_json(data: Any, path: str | Path) -> None:
    """Atomically write ``data`` as indented, strict JSON (NaN and infinities become ``null``; the
    diverged-task counts beside them say why)."""
    payload = (json.dumps(_strict(data), indent=2, sort_keys=False, allow_nan=False) + "\n").encode()
    _atomic_write(Path(path), lambda handle: handle.write(payload))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a maml-cli checkpoint onto the CPU; any problem is a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        hint = " (it is a directory)" if path.is_dir() else ""
        raise CheckpointError(
            f"checkpoint not found: {path}{hint}; pass the path of a .pt file written by "
            "maml-train, e.g. <run dir>/checkpoints/best.pt"
        )
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted, truncated, or holds pickled code
        if "Weights only load failed" in str(exc) and "Unsupported" in str(exc):
            why = "it is corrupted or holds Python objects beyond tensors and plain data (never unpickled)"
        else:
            why = "it is not a readable PyTorch file (corrupted or truncated)"
        raise CheckpointError(
            f"cannot load checkpoint {path}: {why}; use a checkpoint written by maml-train, "
            "e.g. the run's best.pt or last.pt"
        ) from None
    if not isinstance(state, dict) or any(key not in state for key in _REQUIRED_KEYS):
        raise CheckpointError(
            f"{path} is not a maml-cli checkpoint (it lacks {', '.join(_REQUIRED_KEYS)}); "
            "pass a checkpoint written by maml-train"
        )
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer maml-cli (format {state['format_version']}, this "
            f"version reads {FORMAT_VERSION}); upgrade maml-cli"
        )
    return state
