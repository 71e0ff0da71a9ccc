"""``maml-sweep-report``: what a multirun or an Optuna study found, read from its sweep dir.

    maml-sweep-report multirun/2024-05-01/12-00-00 [top=10]

Prints the trials ranked by their best validation metric (its direction: a loss lower, an
accuracy higher; accuracy in percent) with the swept parameters, steps, wall time and whether each
job failed or diverged, then the ``maml-train`` line that runs the best config once. Writes, in the
sweep dir, ``sweep_report.csv`` (every trial), ``sweep_report.png`` (the metric against each swept
parameter) and ``tb_hparams/`` (TensorBoard's HParams tab: ``tensorboard --logdir DIR``).
The reading and drawing are in :mod:`maml_cli.sweeps.report`; this is the command line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from maml_cli.cli.key_values import Option, command
from maml_cli.errors import ConfigError

PROG = "maml-sweep-report"
USAGE = "usage: maml-sweep-report DIR [top=N]   (DIR: a multirun's hydra.sweep.dir, or dir=DIR)"
OPTIONS = (
    Option("dir", "the sweep dir: where maml-train -m wrote the job dirs 0/, 1/, ... (may be given first, bare)"),
    Option("top", "print the N best trials only (default: all; the CSV has all)"),
)


def _with_dir(argv: list[str]) -> list[str]:
    """The bare first argument (the issue's ``maml-sweep-report DIR``) as ``dir=DIR``; a folder
    whose name holds ``=`` is given as ``dir=...``."""
    if argv and "=" not in argv[0] and not argv[0].startswith("-"):
        return [f"dir={argv[0]}", *argv[1:]]
    return argv


def report(args: dict[str, str]) -> str:
    """Read the sweep, write the CSV, figure and HParams logs; the text to print."""
    from maml_cli.sweeps import report as results

    if "dir" not in args:
        raise ConfigError(f"say which sweep: {PROG} DIR (a multirun's hydra.sweep.dir)")
    top = None
    if "top" in args:
        try:
            top = int(args["top"])
        except ValueError:
            top = 0
        if top < 1:
            raise ConfigError(f"top must be a whole number of at least 1, got {args['top']!r}")
    sweep = results.read_sweep(args["dir"])
    lines = [results.table(sweep, top), ""]
    best = sweep.best
    if best is None:
        lines.append("no run has a finite validation value, so there is no best config")
    else:
        scale, unit = sweep.scale
        lines.append(f"best: job {best.job}, {sweep.metric} {scale * best.value:.4g}{unit}; run it once with:")
        lines.append(results.override_line(sweep, best))
    csv_path = Path(sweep.dir) / results.CSV_FILE
    figure_path = Path(sweep.dir) / results.FIGURE_FILE
    hparams_dir = Path(sweep.dir) / results.HPARAMS_DIR
    results.write_csv(sweep, csv_path)
    panels = results.write_figure(sweep, figure_path)
    results.write_hparams(sweep, hparams_dir)
    lines += [
        "",
        f"wrote {csv_path}, {figure_path} ({panels} panel{'s' if panels != 1 else ''}) and {hparams_dir}/ "
        f"(tensorboard --logdir {sweep.dir}: HParams tab)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(USAGE + f"\nsee {PROG} --help", file=sys.stderr)
        return 2
    return command(PROG, OPTIONS, USAGE, lambda args: print(report(args), flush=True), _with_dir(argv))


if __name__ == "__main__":
    sys.exit(main())
