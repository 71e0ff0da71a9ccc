"""``key=value`` arguments for the commands that need no config composition (``maml-adapt``,
``maml-predict``, ``maml-export``, ``maml-serve``): they start without Hydra, and their errors
are one line, ``error: ...``, exit status 1 (``MAML_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import maml_cli.cli  # noqa: F401  (OpenMP's wait policy, before torch loads)
from maml_cli.errors import ConfigError, MamlError


@dataclass(frozen=True)
class Option:
    name: str
    help: str
    required: bool = False


def parse_arguments(prog: str, argv: Sequence[str], options: Sequence[Option], usage: str) -> dict[str, str] | None:
    """``key=value`` arguments as a dict; ``None`` after printing the help for ``-h``/``--help``."""
    if any(arg in ("-h", "--help") for arg in argv):
        width = max(len(o.name) for o in options) + 7
        lines = [usage.strip(), "", "Options:"]
        lines += [f"  {o.name + '=VALUE':<{width}} {o.help}{' (required)' if o.required else ''}" for o in options]
        print("\n".join(lines))
        return None
    names = [o.name for o in options]
    values: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"{prog} takes key=value arguments, got {arg!r}; see {prog} --help")
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown argument {key!r}{hint}; {prog} takes {', '.join(names)}")
        if key in values:
            raise ConfigError(f"{key}= is given twice; give it once")
        if not value:
            raise ConfigError(f"{key}= needs a value")
        values[key] = value
    missing = [f"{o.name}=..." for o in options if o.required and o.name not in values]
    if missing:
        raise ConfigError(f"{prog} needs {' and '.join(missing)}; see {prog} --help")
    return values


def run(prog: str, body: Callable[[], None]) -> int:
    """Run ``body``; an error caused by input is one line on stderr and exit status 1."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("note: %(message)s"))
    logger = logging.getLogger("maml_cli")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        body()
        return 0
    except MamlError as exc:
        if os.environ.get("MAML_DEBUG") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # the reader left (``maml-sweep-report DIR | head``): no traceback, as a pipe expects
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit fails otherwise
        return 141  # 128 + SIGPIPE, what a shell reports for a command a closed pipe stopped
    except OSError as exc:
        if os.environ.get("MAML_DEBUG") == "1" or not exc.filename:
            raise
        print(f"error: cannot read or write {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def command(prog: str, options: Sequence[Option], usage: str, action: Callable[[dict[str, str]], None], argv) -> int:
    """A command's ``main``: parse ``argv`` (default ``sys.argv[1:]``), run ``action`` on the
    arguments (not after ``--help``); the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> None:
        args = parse_arguments(prog, argv, options, usage)
        if args is not None:
            action(args)

    return run(prog, body)


def device_of(value: str | None):
    """The torch device ``device=`` names (default cpu), one line if it names none."""
    import torch

    try:
        return torch.device(value or "cpu")
    except RuntimeError:
        raise ConfigError(f"device={value} is not a device; use cpu, cuda, cuda:1, mps ...") from None
