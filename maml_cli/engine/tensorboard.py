"""TensorBoard's writer, with its failures as one line instead of a background thread's traceback.

``SummaryWriter`` writes from a thread of its own; when that write fails (a full disk, a
read-only dir) the thread prints its traceback on stderr, in the middle of our output, and the
main thread gets the same exception at its next call. Here the thread stays quiet (its exception
is kept and raised in the main thread, where it is reported once, naming the ``tb/`` dir).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from maml_cli.errors import MamlError

_default_excepthook = threading.excepthook


class TensorBoardError(MamlError):
    """The TensorBoard event file cannot be written."""


def _quiet_writer_threads(args: threading.ExceptHookArgs) -> None:
    if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
        return  # the writer keeps it and raises it in the main thread, which reports it once
    _default_excepthook(args)


class Writer:
    """The calls of ``SummaryWriter`` the trainer makes; an ``OSError`` in any of them is a
    :class:`TensorBoardError`, and once one has happened, later calls do nothing."""

    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        threading.excepthook = _quiet_writer_threads
        self.log_dir = Path(log_dir)
        self.failed = False
        self._writer = self._guard(lambda: SummaryWriter(log_dir=str(self.log_dir)))

    def _guard(self, call) -> Any:
        if self.failed:
            return None
        try:
            return call()
        except OSError as exc:
            self.failed = True
            raise TensorBoardError(
                f"cannot write TensorBoard events in {self.log_dir}: {exc.strerror or exc}; free some space "
                "or choose a writable run dir (hydra.run.dir=DIR); checkpoints already written are kept"
            ) from None

    def add_scalar(self, *args, **kwargs) -> None:
        self._guard(lambda: self._writer.add_scalar(*args, **kwargs))

    def add_figure(self, *args, **kwargs) -> None:
        self._guard(lambda: self._writer.add_figure(*args, **kwargs))

    def flush(self) -> None:
        self._guard(self._writer.flush)

    def close(self) -> None:
        """Close, reporting a failure only if none was reported before (``close`` runs in a
        ``finally`` block, where a second error would hide the first)."""
        if self._writer is None or self.failed:
            return
        if sys.exc_info()[1] is not None:  # closing while another error propagates: that one is reported
            try:
                self._writer.close()
            except OSError:
                self.failed = True
            return
        self._guard(self._writer.close)
