"""User-facing errors.

Anything the user can fix (a bad config value, a missing or corrupted file, a diverging run) is
raised as a :class:`MamlError` whose message says what is wrong and how to fix it. The CLI prints
it as one line and exits non-zero; tracebacks are for bugs, not for bad input.
"""

from __future__ import annotations


class MamlError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""

    exit_code = 1


class ConfigError(MamlError):
    """A config value that is out of range or inconsistent with another."""


class CheckpointError(MamlError):
    """A checkpoint that is missing, unreadable, or not one of ours."""


class NonFiniteLossError(MamlError):
    """Training produced NaN or inf; the last good checkpoint is kept as it was."""


class TrainingInterrupted(MamlError):
    """Ctrl-C or SIGTERM stopped training after ``last.pt`` was written."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number
