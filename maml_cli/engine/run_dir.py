"""One run per run dir: a lock that a live ``maml-train`` / ``maml-eval`` holds on its run dir.

Two runs writing into one dir leave checkpoints of one, ``.hydra/`` of the other and an
interleaved log, all with exit 0. So each run takes an exclusive ``flock`` on ``<run dir>/.lock``
before anything is written there, and a second run is refused with one line.

Why ``flock`` rather than a pid in a file: the kernel drops the lock when its process dies, however
it dies (kill -9 included), so a stale lock can never block and a recycled pid can never be
mistaken for the owner. The pid written into the file only serves the error message. The file
itself is left in place at exit (unlinking a lock file races with a process about to lock it);
an unlocked ``.lock`` means nothing.
"""

from __future__ import annotations

import fcntl
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from maml_cli.errors import MamlError

LOCK_NAME = ".lock"

#: Locks this process holds: resolved run dir -> [file descriptor, holders].
_held: dict[Path, list[int]] = {}


class RunDirInUse(MamlError):
    """Another live process is writing into the run dir."""


def _owner(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200).decode(errors="replace").strip()
    except OSError:
        return ""
    return f" ({text.split(':', 1)[0]})" if text.startswith("pid ") else ""


def acquire(run_dir: str | Path) -> Path:
    """Lock ``run_dir`` (created if missing) for this process; re-entrant within a process.

    Raises :class:`RunDirInUse` when another live process holds it, and a one-line
    :class:`MamlError` when the dir or its lock file cannot be created.
    """
    path = Path(run_dir).absolute()
    if path in _held:
        _held[path][1] += 1
        return path
    lock = path / LOCK_NAME
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise MamlError(
            f"cannot create the run dir {path} or its lock file {lock}: {exc.strerror or exc}; "
            "choose a writable location with hydra.run.dir=DIR"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _owner(fd)
        os.close(fd)
        raise RunDirInUse(
            f"run dir {path} is in use by another running maml-train or maml-eval{owner}; "
            "wait for it to end, or choose another hydra.run.dir"
        ) from None
    except OSError as exc:  # a file system without locks: say so rather than run unprotected
        os.close(fd)
        raise MamlError(f"cannot lock {lock}: {exc.strerror or exc}; choose a run dir on a local disk") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])[:150]}\n".encode())
    except OSError:
        pass  # the note is for people; the lock is what counts
    _held[path] = [fd, 1]
    return path


def release(run_dir: str | Path) -> None:
    """Undo one :func:`acquire`; the lock goes when its last holder releases it."""
    path = Path(run_dir).absolute()
    entry = _held.get(path)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[path]
        os.close(entry[0])  # closing the descriptor drops the flock


@contextmanager
def locked(run_dir: str | Path):
    """Hold the run dir's lock for the duration of a job."""
    acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir)


def is_held(run_dir: str | Path) -> bool:
    return Path(run_dir).absolute() in _held
