#!/usr/bin/env python
"""What each algorithm of the MAML family costs per meta-step, relative to MAML, in the real trainer.

Every cell is a fresh ``maml-train`` process that runs a few meta-steps of one ``inner_loop`` config
on the same data, model, meta-batch and number of inner steps (episode sampling, meta-step, the
meta-optimizer and logging included; validation and checkpoints pushed out of the way). The
figures are the process's median step time and its peak memory: resident set size on a CPU, so it
includes the interpreter, torch and the data; peak allocated memory on a GPU.

    python scripts/bench_algorithms.py [--setting omniglot|sinusoid] [--steps 20] [--inner-steps 5]

The Omniglot setting needs the real data under MAML_DATA_ROOT (see the README).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from toolkit import BIN, TRAIN_DEFAULT_THREADS, provenance

ALGORITHMS = [  # (label, overrides); MAML first: the others are reported relative to it
    ("MAML", ["inner_loop=maml"]),
    ("FOMAML", ["inner_loop=fomaml"]),
    ("ANIL", ["inner_loop=anil"]),
    ("Meta-SGD", ["inner_loop=metasgd"]),
    ("MAML++", ["inner_loop=mamlpp"]),
    ("Reptile", ["inner_loop=reptile"]),
    ("iMAML", ["inner_loop=imaml"]),
]
SETTINGS = {
    # Conv-4 (64 filters), 5-way 1-shot, 5 query examples per class, 8 tasks per meta-batch.
    "omniglot": [
        "experiment=omniglot_5w1s",
        "dataset.query=5",
        "trainer.meta_batch_size=8",
        "inner_loop.lr=0.1",
    ],
    # The MLP 1-40-40-1 on 10-shot sinusoid regression, 25 tasks per meta-batch.
    "sinusoid": ["dataset=sinusoid", "model=mlp", "inner_loop.lr=0.01"],
}
QUIET = [
    "trainer.val_every=1000000",
    "trainer.ckpt_every=1000000",
    "trainer.val_tasks=4",
    "trainer.figures=false",
    "trainer.progress=false",
]


def run_cell(label: str, overrides: list[str], args: argparse.Namespace) -> dict:
    run_dir = args.out / args.setting / label.lower().replace("+", "p").replace("-", "")
    command = [
        str(BIN / "maml-train"),
        *overrides,  # the group choice first, so the setting's values apply to it
        *SETTINGS[args.setting],
        *QUIET,
        f"inner_loop.steps={args.inner_steps}",
        f"inner_loop.eval_steps={args.inner_steps}",
        f"trainer.max_steps={args.steps}",
        f"hydra.run.dir={run_dir}",
    ]
    if label == "Reptile":  # an inner Adam: its own learning rate, not SGD's
        command = [c for c in command if not c.startswith("inner_loop.lr=")]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed:\n{proc.stderr[-2000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "algorithm": label,
        "task_batching": metrics["task_batching"],
        "ms_per_step": metrics["median_step_ms"],
        "peak_memory_mb": metrics["peak_memory_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="omniglot")
    parser.add_argument("--steps", type=int, default=20, help="meta-steps per cell")
    parser.add_argument("--inner-steps", type=int, default=5, help="inner steps, the same for every algorithm")
    parser.add_argument("--only", nargs="*", help="labels to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/algorithms"))
    args = parser.parse_args()

    print(provenance(0, TRAIN_DEFAULT_THREADS), flush=True)  # maml-train's default seed and threads
    rows = []
    for label, overrides in ALGORITHMS:
        if args.only and label not in args.only and label != "MAML":
            continue
        rows.append(run_cell(label, overrides, args))
        base = rows[0]
        row = rows[-1]
        row["time_vs_maml"] = round(row["ms_per_step"] / base["ms_per_step"], 3)
        row["memory_vs_maml"] = round(row["peak_memory_mb"] / base["peak_memory_mb"], 3)
        print(
            f"{label:<9} ({row['task_batching']}): {row['ms_per_step']:8.1f} ms/step ({row['time_vs_maml']:.2f}x), "
            f"peak {row['peak_memory_mb']:6.0f} MB ({row['memory_vs_maml']:.2f}x)",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{args.setting}.json"
    out.write_text(
        json.dumps({"setting": SETTINGS[args.setting], "inner_steps": args.inner_steps, "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
