#!/usr/bin/env python
"""Seconds per meta-step and peak memory for Conv-4 on Omniglot 5-way 1-shot, in the real trainer.

The setup of the speed comparison in PERF-NOTES.md: Conv-4 with 64 filters, 28x28 inputs, 5-way
1-shot with 15 query examples per class, 32 tasks per meta-batch, one inner step. Each cell is a
fresh ``maml-train`` process running a few meta-steps (episode sampling, meta-step, Adam and
logging included); the figure is the median step time of the process. It also times episode
sampling alone, as a share of a meta-step.

    python scripts/bench_omniglot_speed.py [--steps 5] [--out bench-out/omniglot_speed]

Needs the real Omniglot under MAML_DATA_ROOT (see the README).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch
from toolkit import BIN, TRAIN_DEFAULT_THREADS, provenance

CELLS = [  # (label, overrides)
    ("MAML, auto", ["inner_loop.task_batching=auto"]),
    ("MAML, loop", ["inner_loop.task_batching=loop"]),
    ("MAML, vmap", ["inner_loop.task_batching=vmap"]),
    ("FOMAML, auto", ["inner_loop.task_batching=auto", "inner_loop.first_order=true"]),
    ("FOMAML, loop", ["inner_loop.task_batching=loop", "inner_loop.first_order=true"]),
    ("FOMAML, vmap", ["inner_loop.task_batching=vmap", "inner_loop.first_order=true"]),
    ("ANIL, auto", ["inner_loop=anil", "inner_loop.lr=0.4", "inner_loop.task_batching=auto"]),
]
SETUP = [
    "experiment=omniglot_5w1s",
    "dataset.query=15",
    "inner_loop.steps=1",
    "trainer.meta_batch_size=32",
    "trainer.val_every=1000000",
    "trainer.ckpt_every=1000000",
    "trainer.val_tasks=10",
    "trainer.figures=false",
    "trainer.progress=false",
]


def sampling_seconds(repeats: int = 20) -> float:
    from maml_cli.data.omniglot import omniglot_tasks

    tasks = omniglot_tasks(query=15)
    generator = torch.Generator().manual_seed(0)
    tasks.sample(32, generator)
    started = time.perf_counter()
    for _ in range(repeats):
        tasks.sample(32, generator)
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-out/omniglot_speed"))
    args = parser.parse_args()

    print(provenance(0, TRAIN_DEFAULT_THREADS), flush=True)  # maml-train's default seed and threads
    rows = []
    for label, overrides in CELLS:
        run_dir = args.out / label.replace(", ", "-").lower()
        subprocess.run(
            [
                str(BIN / "maml-train"),
                *SETUP,
                *overrides,
                f"trainer.max_steps={args.steps}",
                f"hydra.run.dir={run_dir}",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        metrics = json.loads((run_dir / "metrics.json").read_text())
        rows.append(
            {
                "cell": label,
                "task_batching": metrics["task_batching"],
                "seconds_per_step": metrics["median_step_ms"] / 1e3,
                "peak_memory_mb": metrics["peak_memory_mb"],
            }
        )
        print(
            f"{label:<14} ({metrics['task_batching']}): {rows[-1]['seconds_per_step']:.2f} s/step, "
            f"peak {metrics['peak_memory_mb']:.0f} MB",
            flush=True,
        )
    sample = sampling_seconds()
    auto = rows[0]["seconds_per_step"]
    print(
        f"\nepisode sampling (32 tasks, 5-way 1-shot, 15 query): {1e3 * sample:.1f} ms = "
        f"{100 * sample / auto:.2f}% of a MAML meta-step  {provenance(0, torch.get_num_threads())}"
    )
    print(f"target: MAML second order, auto, <= 3.0 s/step: {'met' if auto <= 3.0 else 'MISSED'} ({auto:.2f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"cells": rows, "sampling_s": sample}, indent=2) + "\n")


if __name__ == "__main__":
    main()
