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


def number(value: float | None, spec: str = ".3f") -> str:
    """A figure from ``eval.json``, where strict JSON writes NaN and infinity as ``null``."""
    return "nan/inf" if value is None else format(value, spec)


def maml_eval(checkpoint: Path, output: Path, run_dir: Path, *overrides: str, quiet: bool = False) -> dict:
    """Score ``checkpoint`` on 600 test episodes (unless an override says otherwise) and return
    the JSON written to ``output``; ``run_dir`` takes Hydra's log of the evaluation."""
    subprocess.run(
        [
            str(BIN / "maml-eval"),
            f"checkpoint={checkpoint}",
            "eval.episodes=600",
            f"eval.output={output}",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ],
        check=True,
        stdout=subprocess.DEVNULL if quiet else None,
    )
    return json.loads(output.read_text())
