"""Files the toolkit writes and later trusts: written atomically, verified when read back.

Every such file (checkpoints, top-k checkpoints, dataset caches, JSON results) is written by
:func:`atomic_write`: into a temporary file in the target's directory, flushed to disk, then renamed
over the target, so a crash, a kill -9 or a full disk never leaves a half-written file under the
real name, and the previous file stays intact. A failed write is a :class:`WriteError`, one line
that names the file, the reason (no space, permission denied, read-only file system) and what to
do, with the temporary file removed.

The temporary file is ``.<name>.<8 random characters>.tmp`` (hidden, so ``*.pt`` never matches it)
and its writer holds an exclusive ``flock`` on it until the rename. The kernel drops that lock when
the writer dies, however it dies, so :func:`remove_interrupted_writes` can tell the litter of a
killed writer (unlocked) from a live writer's file in progress (locked), with no guessing from
ages or process ids (which a slow disk, a container's pid namespace or another host would fool).

``torch.load`` does not check the CRC-32s of its zip members, so a damaged file can load as
plausible numbers. :func:`save_verified` therefore stores an xxh3-128 digest of the whole saved
structure (every tensor's bytes, dtype and shape, every key and plain value) inside the file, and
:func:`split_integrity` recomputes it after loading. xxh3 runs at memory speed: on the 25 MB
Omniglot cache it takes 2.5-4 ms, as long as a plain numpy sum over the same bytes, where
``zipfile.testzip`` (zlib CRC-32) takes 16-18 ms and SHA-256 18 ms or more
(``scripts/bench_integrity.py``). The digest detects damage (a bad disk, a torn copy, bytes
overwritten), not tampering: whoever can write the file can rewrite the digest too.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
import xxhash

from maml_cli.errors import MamlError

INTEGRITY_KEY = "integrity"
ALGORITHM = "xxh3_128"
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # what tempfile.mkstemp(prefix=".<name>.", suffix=".tmp") makes


class WriteError(MamlError, OSError):
    """A file could not be written (no space, no permission, a read-only file system, ...).

    Also an :class:`OSError`, which it is, so code that handles OS errors keeps handling it.
    """

    def __init__(self, message: str, cause: OSError, path: Path) -> None:
        super().__init__(message)
        self.errno, self.strerror, self.filename = cause.errno, cause.strerror, str(path)

    def __str__(self) -> str:
        return self.args[0]


def _file_mode() -> int:
    """The permissions an ordinary ``open()`` would give a new file: 0o666 less the umask.
    (``mkstemp`` makes its files 0o600 whatever the umask, which would hide results from a group.)
    Read from /proc where it can be: ``os.umask`` can only be read by setting it, which would race
    with other threads creating files."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _write_error(path: Path, exc: OSError, hint: str) -> WriteError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = f"free some space or {hint}"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        todo = f"make {path.parent} writable or {hint}"
    else:
        todo = hint
    return WriteError(f"cannot write {path}: {reason}; {todo}", exc, path)


class _RecordingErrors:
    """A file handle that remembers the OS error of a failed write. ``torch.save`` turns it into a
    RuntimeError of 60 lines ("[enforce fail at inline_container.cc] ... file write failed");
    this keeps the real reason (e.g. ENOSPC) to report."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as exc:
            self.error = exc
            raise


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object], hint: str) -> None:
    """Write ``path`` with ``write(handle)``, atomically; a failure is a :class:`WriteError` whose
    message ends with ``hint`` (e.g. "choose another hydra.run.dir") and leaves the old file as it was."""
    path = Path(path)
    tmp: str | None = None
    recording: _RecordingErrors | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # "being written": see remove_interrupted_writes
            recording = _RecordingErrors(handle)
            write(recording)
            handle.flush()
            os.fchmod(handle.fileno(), _file_mode())
            os.fsync(handle.fileno())
            os.replace(tmp, path)  # still locked: a cleaner never sees an unlocked file in progress
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = exc if isinstance(exc, OSError) else recording.error if recording is not None else None
        if isinstance(exc, WriteError) or cause is None or not isinstance(exc, Exception):
            raise
        raise _write_error(path, cause, hint) from None


def remove_interrupted_writes(directory: str | Path) -> list[Path]:
    """Remove the temporary files that writers killed mid-write left in ``directory`` (not in its
    subdirectories); returns them. A file a live writer still holds locked is left alone."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:  # missing or unreadable: nothing of ours to clean
        return removed
    for name in names:
        if not _TEMPORARY.match(name):
            continue
        path = Path(directory) / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # renamed into place (or removed) since the listing
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Locked by us now, so no writer is left; but the file may have been renamed into place
            # between the listing and the lock: remove the name only if it is still this file.
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                path.unlink()
                removed.append(path)
        except OSError:  # locked by a live writer, or gone
            pass
        finally:
            os.close(fd)
    return removed


# -- integrity ------------------------------------------------------------------------------------


_PLAIN = (str, int, float, bool, type(None))


def _walk(value: Any, text: list[str], tensors: list[torch.Tensor]) -> None:
    """Describe ``value`` as ``torch.load`` gives it back: its structure and plain values as text
    (mappings and sequences in order, plain values by type and ``repr``), its tensors by dtype and
    shape there and by their bytes in ``tensors``. A list or dict of plain values is one ``repr``:
    hashing the 1,623 class names of Omniglot one by one would cost more than its 25 MB of pixels."""
    if isinstance(value, torch.Tensor):
        text.append(f"T{value.dtype}{tuple(value.shape)}|")
        tensors.append(value)
    elif isinstance(value, Mapping) and not all(type(k) in _PLAIN and type(v) in _PLAIN for k, v in value.items()):
        text.append(f"{{{len(value)}|")
        for key, item in value.items():
            _walk(key, text, tensors)
            _walk(item, text, tensors)
    elif isinstance(value, (list, tuple)) and not all(type(item) in _PLAIN for item in value):
        text.append(f"[{len(value)}|")
        for item in value:
            _walk(item, text, tensors)
    else:
        text.append(f"{type(value).__name__}:{value!r}|")


def digest(state: Mapping[str, Any]) -> str:
    """The hex xxh3-128 digest of ``state`` (see the module docstring and :func:`_walk`)."""
    text: list[str] = []
    tensors: list[torch.Tensor] = []
    _walk(state, text, tensors)
    hasher = xxhash.xxh3_128("".join(text).encode())
    for tensor in tensors:
        flat = tensor.detach().cpu().contiguous().reshape(-1)  # no copies for a loaded tensor
        hasher.update(flat.view(torch.uint8).numpy())  # the memory itself, no copy
    return hasher.hexdigest()


def with_integrity(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` and, under ``"integrity"``, the digest that :func:`split_integrity` checks."""
    return {**state, INTEGRITY_KEY: {"algorithm": ALGORITHM, "digest": digest(state)}}


def split_integrity(state: dict[str, Any]) -> tuple[dict[str, Any], bool | None]:
    """``state`` without its integrity record, and whether it matches: True, False (damaged), or
    None when there is no record (a file written before records existed: unverified)."""
    record = state.get(INTEGRITY_KEY)
    if record is None:
        return state, None
    payload = {key: value for key, value in state.items() if key != INTEGRITY_KEY}
    ok = (
        isinstance(record, Mapping) and record.get("algorithm") == ALGORITHM and record.get("digest") == digest(payload)
    )
    return payload, ok


def save_verified(state: Mapping[str, Any], path: str | Path, hint: str) -> None:
    """``torch.save`` ``state`` with its integrity record, atomically (see :func:`atomic_write`)."""
    recorded = with_integrity(state)
    atomic_write(path, lambda handle: torch.save(recorded, handle), hint)


def file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    """The hex xxh3-128 digest of a file's bytes: names the exact checkpoint a derived file came from."""
    hasher = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            hasher.update(block)
    return hasher.hexdigest()


def load_verified(path: str | Path) -> tuple[Any, bool | None]:
    """``torch.load`` (``weights_only``, onto the CPU) of a file written by :func:`save_verified`, and
    its integrity verdict (see :func:`split_integrity`); raises what ``torch.load`` raises."""
    import warnings

    with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
        warnings.simplefilter("ignore")
        state = torch.load(path, map_location="cpu", weights_only=True)
    return split_integrity(state) if isinstance(state, dict) else (state, None)
