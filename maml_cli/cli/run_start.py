"""What a CLI does with its command line before Hydra starts: lock an explicit run dir.

Hydra writes ``.hydra/*.yaml`` and opens the job's log file in the run dir before our task runs,
so a lock taken inside the task would come after another run's files were already overwritten.
An explicit ``hydra.run.dir=DIR`` is therefore locked here, first; a default run dir (unique to
the microsecond) and each multirun job's dir are locked when the job starts.
"""

from __future__ import annotations

from pathlib import Path

from maml_cli.engine import run_dir as run_dirs

#: Flags with which Hydra prints something and exits without running a job.
_NO_JOB_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")


def argument(argv: list[str], key: str) -> str | None:
    """The last value given to ``key`` on the command line (``key=V``, ``+key=V`` or ``++key=V``)."""
    value = None
    for arg in argv:
        name, sep, rest = arg.lstrip("+").partition("=")
        if sep and name == key:
            value = rest
    if value is not None and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return value


def runs_one_job(argv: list[str]) -> bool:
    """True when Hydra will run a single job in ``hydra.run.dir`` (no multirun, no --help/--cfg)."""
    if any(arg in ("-m", "--multirun") or arg.split("=", 1)[0] in _NO_JOB_FLAGS for arg in argv):
        return False
    return (argument(argv, "hydra.mode") or "RUN").upper() != "MULTIRUN"


def explicit_run_dir(argv: list[str]) -> Path | None:
    """The ``hydra.run.dir`` given on the command line, when it is a plain path and a job will run."""
    value = argument(argv, "hydra.run.dir")
    if not value or "${" in value or not runs_one_job(argv):
        return None
    return Path(value).absolute()


def lock_explicit_run_dir(argv: list[str]) -> None:
    """Refuse (one line) a run dir that a live process is using, before Hydra writes into it."""
    path = explicit_run_dir(argv)
    if path is not None:
        run_dirs.acquire(path)  # held until the process exits
