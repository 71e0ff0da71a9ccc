"""The toolkit's commands as the benchmark scripts call them.

Each script runs ``maml-train`` and ``maml-eval`` from the environment that runs the script (so a
venv's interpreter finds its own entry points), stops at the first failure, and reads the
evaluation back from the JSON that ``maml-eval`` writes rather than from its printed table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """The short commit of the repository these scripts live in, ``(+uncommitted changes)`` after
    it when tracked files differ from it, or ``unknown`` when git or the repository is missing."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown"
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = " (+uncommitted changes)" if status.returncode != 0 or status.stdout.strip() else ""
    return head.stdout.strip() + dirty


# What a run with ``trainer.num_threads`` unset uses (maml_cli.threads.default_threads).
TRAIN_DEFAULT_THREADS = "maml-train's default threads (1 without convolutions, else governed)"


def provenance(seed: int | str | None, threads: int | str | None, commit: str | None = None) -> str:
    """One bracketed line naming what produced a table's numbers: the seed, the git commit (``commit``
    if given, e.g. :func:`git_commit` taken before the runs, else the commit now), torch's version and
    the torch thread count (a number, or a phrase such as :data:`TRAIN_DEFAULT_THREADS`)."""
    import torch

    seed_text = "unset" if seed is None else seed
    counted = isinstance(threads, int) or str(threads).replace("/", "").isdigit()  # "4", or "1/4" for several
    threads_text = f"{threads} thread(s)" if counted else (threads or "threads unknown")
    return f"[seed {seed_text} | git {commit or git_commit()} | torch {torch.__version__} | {threads_text}]"


def number(value: float | None, spec: str = ".3f") -> str:
    """A figure from ``eval.json``, where strict JSON writes NaN and infinity as ``null``."""
    return "nan/inf" if value is None else format(value, spec)


def maml_eval(
    checkpoint: Path, output: Path, run_dir: Path, *overrides: str, quiet: bool = False, episodes: int = 600
) -> dict:
    """Score ``checkpoint`` on ``episodes`` test episodes (``eval.split=val`` among the overrides
    scores validation ones) and return the JSON written to ``output``; ``run_dir`` takes Hydra's
    log of the evaluation."""
    subprocess.run(
        [
            str(BIN / "maml-eval"),
            f"checkpoint={checkpoint}",
            f"eval.episodes={episodes}",
            f"eval.output={output}",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ],
        check=True,
        stdout=subprocess.DEVNULL if quiet else None,
    )
    return json.loads(output.read_text())
