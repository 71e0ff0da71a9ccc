#!/usr/bin/env python
"""Time per meta-step, tasks/s and peak memory of ``vmap`` and ``loop`` in the real trainer.

Each measurement is a fresh ``maml-train`` process on the MAML paper's sinusoid setup (MLP
1-40-40-1, 25 tasks, K=10+10, one inner step, alpha=0.01, Adam 1e-3), sampling, optimizer step,
logging, validation and checkpointing included; the trainer records each step's wall time and
its peak memory in ``metrics.json``. Strategies alternate within each repetition, because this
machine's speed drifts between processes (PERF-NOTES.md: up to 1.8x), and the figures quoted are
medians over repetitions of each process's median step time.

    python scripts/bench_task_batching.py [--reps 3] [--device cpu] [--out bench-out/task_batching]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from toolkit import BIN, provenance

# A loop meta-step takes ~10x longer, so it runs fewer steps for a comparable wall time.
STEPS = {"vmap": 3000, "loop": 400}


def run_once(strategy: str, first_order: bool, device: str, out: Path) -> dict:
    run_dir = out / f"{strategy}-{'fo' if first_order else 'so'}"
    subprocess.run(
        [
            str(BIN / "maml-train"),
            "experiment=sinusoid_maml_paper",
            f"trainer.max_steps={STEPS[strategy]}",
            f"inner_loop.task_batching={strategy}",
            f"inner_loop.first_order={str(first_order).lower()}",
            f"trainer.device={device}",
            "trainer.progress=false",
            f"hydra.run.dir={run_dir}",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads((run_dir / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench-out/task_batching"))
    args = parser.parse_args()

    rows = []
    for first_order in (False, True):
        samples: dict[str, list[dict]] = {"vmap": [], "loop": []}
        for rep in range(args.reps):
            for strategy in ("vmap", "loop") if rep % 2 == 0 else ("loop", "vmap"):
                samples[strategy].append(run_once(strategy, first_order, args.device, args.out))
        for strategy, runs in samples.items():
            step_ms = statistics.median(r["median_step_ms"] for r in runs)
            rows.append(
                {
                    "order": "first" if first_order else "second",
                    "task_batching": strategy,
                    "median_step_ms": step_ms,
                    "tasks_per_s": 25 / (step_ms / 1e3),
                    "peak_memory_mb": max(r["peak_memory_mb"] for r in runs),
                    "per_process_ms": [r["median_step_ms"] for r in runs],
                }
            )

    print(f"sinusoid, MAML paper setup, device={args.device}, {args.reps} processes per cell")
    print(provenance(0, 1))  # maml-train's default seed; its default for an MLP (no convolutions) is 1 thread
    print(f"{'order':<8}{'batching':<10}{'ms/step':>10}{'tasks/s':>10}{'peak MB':>10}  per process (ms)")
    for r in rows:
        per = ", ".join(f"{v:.2f}" for v in r["per_process_ms"])
        print(
            f"{r['order']:<8}{r['task_batching']:<10}{r['median_step_ms']:>10.2f}"
            f"{r['tasks_per_s']:>10.0f}{r['peak_memory_mb']:>10.0f}  {per}"
        )
    for order in ("second", "first"):
        cell = {r["task_batching"]: r["median_step_ms"] for r in rows if r["order"] == order}
        print(f"{order} order: vmap is {cell['loop'] / cell['vmap']:.1f}x faster than loop")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
