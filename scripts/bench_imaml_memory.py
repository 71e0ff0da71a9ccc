#!/usr/bin/env python
"""Peak memory and time of one meta-step against the number of inner steps: iMAML vs MAML.

Second-order MAML keeps the graph of every inner step until the meta-gradient is back-propagated,
so its memory grows linearly with the number of steps; iMAML detaches each inner step and needs
only one support gradient's graph for its Hessian-vector products (Rajeswaran et al., 2019,
Sec. 3.1 and Fig. 2). Setting: Conv-4 (64 filters) on Omniglot 5-way 1-shot, the presets
``experiment=omniglot_5w1s`` and ``experiment=imaml_omniglot_5w1s`` with the same inner learning
rate, a small meta-batch and the ``loop`` task strategy (one task's graph alive at a time).

Each cell is a fresh process: it builds the run, samples a meta-batch, records its baseline
memory, then times a few meta-steps (``meta_backward`` only). Memory is the peak resident set
size (``resource.getrusage``) on CPU, ``torch.cuda.max_memory_allocated`` on CUDA, minus the
baseline taken just before the first step. Time is the median over the meta-steps after the first.

    python scripts/bench_imaml_memory.py [--steps 1 2 5 10 20] [--tasks 2] [--device cpu]
        [--out bench-out/imaml_memory]

Needs the real Omniglot under MAML_DATA_ROOT (``--synthetic`` uses random images instead).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from toolkit import provenance

PRESETS = {"imaml": "experiment=imaml_omniglot_5w1s", "maml": "experiment=omniglot_5w1s"}


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(algorithm: str, steps: int, tasks: int, meta_steps: int, lr: float, device: str, synthetic: bool) -> dict:
    """One cell, in this process: build, sample, then time ``meta_steps`` meta-gradients."""
    import torch
    from hydra import compose, initialize_config_dir

    from maml_cli.config import config_dir, register_configs
    from maml_cli.data.tasks import TaskBatch
    from maml_cli.engine.build import build_run
    from maml_cli.engine.rng import seed_everything

    overrides = [
        PRESETS[algorithm],
        f"inner_loop.steps={steps}",
        f"inner_loop.lr={lr}",
        "inner_loop.task_batching=loop",
        f"trainer.device={device}",
    ]
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    torch_device = torch.device(device)
    seed_everything(0)
    if synthetic:
        from omegaconf import OmegaConf

        from maml_cli.algorithms import IMAML, MAML
        from maml_cli.models import Conv4

        model = Conv4(1, 5, hidden=64, image_size=28).to(torch_device)
        inner = OmegaConf.to_container(cfg.inner_loop, resolve=True, enum_to_str=True)
        inner.pop("_target_")
        cls = IMAML if algorithm == "imaml" else MAML
        algo = cls(model, torch.nn.functional.cross_entropy, **inner).to(torch_device)
        g = torch.Generator(device="cpu").manual_seed(0)
        labels = torch.arange(5, device=torch_device).expand(tasks, -1)

        def sample() -> TaskBatch:
            images = torch.rand(tasks, 10, 1, 28, 28, generator=g).to(torch_device)
            return TaskBatch(images[:, :5], labels, images[:, 5:], labels)
    else:
        run = build_run(cfg, torch_device)
        algo = run.algorithm
        g = torch.Generator(device=torch_device).manual_seed(0)

        def sample() -> TaskBatch:
            return run.tasks.sample(tasks, g)

    batches = [sample() for _ in range(meta_steps)]
    params = [p for p in algo.parameters() if p.requires_grad]
    if torch_device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2**20
    else:
        baseline = _rss_peak_mb()
    seconds = []  # the first meta-step warms up (allocator, kernels): counted for memory, not time
    for batch in batches:
        for p in params:
            p.grad = None
        started = time.perf_counter()
        out = algo.meta_backward(batch)
        if torch_device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch_device.type == "cuda" else _rss_peak_mb()
    return {
        "algorithm": algorithm,
        "inner_steps": steps,
        "tasks": tasks,
        "device": device,
        "data": "synthetic" if synthetic else "omniglot",
        "baseline_mb": round(baseline, 1),
        "peak_mb": round(peak, 1),
        "step_memory_mb": round(peak - baseline, 1),
        "median_step_s": round(statistics.median(seconds[1:] or seconds), 4),
        "step_s": [round(s, 4) for s in seconds],
        "loss_after": float(out.loss_after.mean()),
        "seed": 0,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    parser.add_argument("--algorithms", nargs="+", default=["imaml", "maml"], choices=sorted(PRESETS))
    parser.add_argument("--tasks", type=int, default=2, help="tasks per meta-batch")
    parser.add_argument("--meta-steps", type=int, default=4, help="meta-steps per cell (the first is not timed)")
    parser.add_argument("--lr", type=float, default=0.1, help="inner learning rate, both algorithms")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--synthetic", action="store_true", help="random images instead of Omniglot")
    parser.add_argument("--out", type=Path, default=Path("bench-out/imaml_memory"))
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell, print its JSON
    args = parser.parse_args()

    if args.cell:
        algorithm, steps = args.cell.split(":")
        result = measure(algorithm, int(steps), args.tasks, args.meta_steps, args.lr, args.device, args.synthetic)
        print(json.dumps(result))
        return

    rows = []
    common = ["--tasks", str(args.tasks), "--meta-steps", str(args.meta_steps), "--lr", str(args.lr)]
    common += ["--device", args.device] + (["--synthetic"] if args.synthetic else [])
    for steps in args.steps:
        for algorithm in args.algorithms:
            proc = subprocess.run(
                [sys.executable, __file__, "--cell", f"{algorithm}:{steps}", *common],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            if proc.returncode != 0:
                sys.exit(f"cell {algorithm}:{steps} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  {algorithm} steps={steps}: {r['step_memory_mb']} MB, {r['median_step_s']} s", file=sys.stderr)

    data = rows[0]["data"]
    print(f"Conv-4, {data} 5-way 1-shot, {args.tasks} tasks per meta-batch, loop, device={args.device}")
    print(provenance(0, "/".join(str(t) for t in sorted({r["threads"] for r in rows}))))
    print(
        "memory = peak minus the process's baseline before the first meta-step; time = median meta-step after the first"
    )
    header = f"{'inner steps':>12}" + "".join(f"{a + ' MB':>12}{a + ' s':>10}" for a in args.algorithms)
    print(header)
    for steps in args.steps:
        cells = {r["algorithm"]: r for r in rows if r["inner_steps"] == steps}
        line = f"{steps:>12}"
        for a in args.algorithms:
            line += f"{cells[a]['step_memory_mb']:>12.1f}{cells[a]['median_step_s']:>10.3f}"
        print(line)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
