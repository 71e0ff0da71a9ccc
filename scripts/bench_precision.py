#!/usr/bin/env python
"""Seconds per meta-step in fp32, bf16 and fp16 (CUDA only), and how close each meta-gradient is to fp32.

Two settings, second-order MAML, in process (the algorithm's ``meta_backward`` alone: no sampling,
no optimizer, no logging): Conv-4 on Omniglot-shaped 28x28 inputs, 5-way 1-shot with 5 query
examples per class (real Omniglot tasks when MAML_DATA_ROOT has them, else Gaussian noise of that
shape; the line says which), and the sinusoid MLP [40, 40]. Each figure is the median of ``--steps``
timed steps after ``--warmup`` untimed ones, and every line carries the seed, git commit, torch
version and thread count. The whole run is sized to finish in one go within 10 minutes on a GPU.

    python scripts/bench_precision.py [--device cpu|cuda] [--steps 10] [--tasks 8] [--hidden 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from toolkit import provenance

from maml_cli.algorithms import MAML
from maml_cli.data.sinusoid import SinusoidTasks
from maml_cli.data.tasks import TaskBatch
from maml_cli.models import MLP, Conv4


def omniglot_batch(tasks: int, seed: int, device: torch.device) -> tuple[TaskBatch, str]:
    root = os.environ.get("MAML_DATA_ROOT")
    if root:
        try:
            from maml_cli.data.omniglot import omniglot_tasks

            distribution = omniglot_tasks(root=root, ways=5, shots=1, query=5, device=device)
            return distribution.sample(tasks, torch.Generator(device=device).manual_seed(seed)), "omniglot"
        except Exception as exc:  # noqa: BLE001 - a benchmark falls back and says so
            print(f"(real Omniglot not used: {str(exc).splitlines()[0][:120]})")
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(5)
    batch = TaskBatch(
        torch.randn(tasks, 5, 1, 28, 28, generator=g),
        y.expand(tasks, 5),
        torch.randn(tasks, 25, 1, 28, 28, generator=g),
        y.repeat_interleave(5).expand(tasks, 25),
    )
    return TaskBatch(*(t.to(device) for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))), "noise"


def bench(make, batch: TaskBatch, precision: str, args, device: torch.device) -> tuple[float, torch.Tensor, float]:
    torch.manual_seed(args.seed)
    algorithm = make(precision).to(device)
    times = []
    for i in range(args.warmup + args.steps):
        for p in algorithm.parameters():
            p.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        algorithm.meta_backward(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    grad = torch.cat([p.grad.flatten().float() for p in algorithm.parameters() if p.grad is not None])
    return statistics.median(times), grad, algorithm.precision.scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=8, help="tasks per meta-batch")
    parser.add_argument("--hidden", type=int, default=64, help="Conv-4 filters")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    stamp = f"{provenance(args.seed, torch.get_num_threads())} device={where}"
    image, source = omniglot_batch(args.tasks, args.seed, device)
    sinusoid = SinusoidTasks(seed=args.seed).sample(25, torch.Generator().manual_seed(args.seed))
    sinusoid = TaskBatch(
        *(t.to(device) for t in (sinusoid.support_x, sinusoid.support_y, sinusoid.query_x, sinusoid.query_y))
    )
    settings = [
        (
            f"Conv-4({args.hidden}) {source} 5w1s q5, {args.tasks} tasks, 1 inner step",
            lambda p: MAML(Conv4(1, 5, args.hidden, 28), F.cross_entropy, steps=1, lr=0.4, precision=p),
            image,
        ),
        (
            "MLP[40,40] sinusoid, 25 tasks, 5 inner steps",
            lambda p: MAML(MLP(1, 1, [40, 40]), F.mse_loss, steps=5, lr=0.01, precision=p),
            sinusoid,
        ),
    ]
    for label, make, batch in settings:
        reference = None
        for precision in precisions:
            seconds, grad, scale = bench(make, batch, precision, args, device)
            if reference is None:
                reference, base = grad, seconds
            cosine = F.cosine_similarity(reference, grad, dim=0).item()
            relative = ((reference - grad).norm() / reference.norm()).item()
            print(
                f"{label} | {precision}: {seconds * 1e3:.1f} ms/meta-step ({base / seconds:.2f}x fp32) | "
                f"meta-gradient vs fp32: cosine {cosine:.4f}, relative error {relative:.3f}"
                + (f" | loss scale {scale:g}" if precision == "fp16" else "")
                + f" | {stamp}",
                flush=True,
            )


if __name__ == "__main__":
    main()
