"""The job's log file (``train.log``, ``evaluate.log``) as a handler that fails in one line.

``logging.FileHandler`` reports a log file it cannot open as Hydra's ~56-line "Unable to configure
handler 'file'", and one it cannot write to (a full disk) as a "--- Logging error ---" traceback
per record while the run goes on. This handler says either once, as a :class:`MamlError` naming
the file, and then stays silent so that the error's own report is not one more failure.
Hydra's ``job_logging`` config in ``train.yaml`` / ``eval.yaml`` selects it.
"""

from __future__ import annotations

import logging

from maml_cli.errors import MamlError


class LogFileError(MamlError):
    """The job's log file cannot be opened or written."""


def _error(filename: str, exc: OSError) -> LogFileError:
    return LogFileError(
        f"cannot write the log file {filename}: {exc.strerror or exc}; free some space or choose a "
        "writable run dir (hydra.run.dir=DIR); files already written are kept"
    )


class JobLogFile(logging.FileHandler):
    """A :class:`logging.FileHandler` whose failures are one-line errors."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None, delay: bool = False) -> None:
        self.failed = False
        try:
            super().__init__(filename, mode, encoding, delay)
        except OSError as exc:
            raise _error(filename, exc) from None

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) and not self.failed:
            self.failed = True  # later records (this error's own report included) are dropped
            raise _error(self.baseFilename, exc) from None
        super().handleError(record)
