#!/usr/bin/env python
"""Why a few sinusoid test tasks blow up: the sharpness of their support loss along the inner loop.

Plain gradient descent with rate alpha on a loss whose Hessian has top eigenvalue lambda overshoots
along that direction when alpha * lambda > 2 (on a quadratic it then grows geometrically). This
script follows each test task's 5-shot, 10-step adaptation from a checkpoint, as the test protocol
of scripts/reproduce_sinusoid.py runs it, and measures alpha * lambda of the support loss at every
step (lambda by power iteration on Hessian-vector products, the full Hessian, not Gauss-Newton).
It prints the spread of alpha * lambda at the meta-learned initialisation, how it relates to the
task's amplitude, and the trajectory of every task that ends worse than it started.

    python scripts/sinusoid_sharpness.py CHECKPOINT [CHECKPOINT ...] [--inner-lr R] [--out FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from reproduce_sinusoid import STEPS, TASKS, load_run
from toolkit import provenance
from torch.func import grad, jvp, vmap

from maml_cli.engine.checkpoint import write_json


def sharpness_trajectories(checkpoint: Path, inner_lr: float | None = None, tasks: int = TASKS, iters: int = 40):
    """For each test task: the top Hessian eigenvalue of the support loss (``lam``) and the query
    MSE (``mse``) after 0..10 plain SGD steps (``[tasks, 11]`` each), the amplitudes, and alpha."""
    run, _ = load_run(checkpoint, inner_lr)
    algorithm = run.algorithm
    alpha = float(algorithm.lr)
    batch = run.tasks.fixed_tasks("test", tasks)
    amplitude = run.tasks.sample_task_parameters(tasks, run.tasks.split_generator("test"))[0].flatten()
    start = {k: v.detach() for k, v in algorithm.initial_params().items()}

    def support_loss(params, x, y):
        # The sinusoid's loss, MSE, written out: F.mse_loss's double backward fails under jvp
        # ("ZeroTensors are immutable", torch 2.14).
        return ((algorithm.forward_with(params, x) - y) ** 2).mean()

    gradient = grad(support_loss)

    def top_eigenvalue(params, x, y, v):
        # Power iteration; after enough iterations it converges to the eigenvalue of largest magnitude.
        value = torch.zeros(())
        for _ in range(iters):
            norm = torch.sqrt(sum((t**2).sum() for t in v.values()))
            v = {k: t / norm for k, t in v.items()}
            hv = jvp(lambda p: gradient(p, x, y), (params,), (v,))[1]
            value = sum((hv[k] * v[k]).sum() for k in v)
            v = hv
        return value

    def trajectory(x, y, qx, qy, v):
        params, lams, mses = dict(start), [], []
        for step in range(STEPS + 1):
            mses.append(run.tasks.metric(algorithm.forward_with(params, qx), qy))
            lams.append(top_eigenvalue(params, x, y, v))
            if step < STEPS:
                g = gradient(params, x, y)
                params = {k: params[k] - alpha * g[k] for k in params}
        return torch.stack(lams), torch.stack(mses)

    generator = torch.Generator().manual_seed(0)
    v0 = {k: torch.randn((tasks, *t.shape), generator=generator) for k, t in start.items()}
    lam, mse = vmap(trajectory)(batch.support_x, batch.support_y, batch.query_x, batch.query_y, v0)
    return {"alpha": alpha, "lam": lam, "mse": mse, "amplitude": amplitude}


def report(name: str, result: dict) -> dict:
    """Print and return the summary of one checkpoint's trajectories."""
    alpha, mse, amplitude = result["alpha"], result["mse"], result["amplitude"]
    edge = alpha * result["lam"]  # alpha * lambda: above 2, plain SGD overshoots along the top direction
    start = edge[:, 0]
    q = torch.quantile(start, torch.tensor([0.1, 0.5, 0.9])).tolist()
    corr = torch.corrcoef(torch.stack([start, amplitude]))[0, 1].item()
    finite = torch.isfinite(mse[:, -1])
    worse = ~finite | (mse[:, -1] > mse[:, 0])
    summary = {
        "alpha": alpha,
        "edge_at_start_q10_q50_q90": q,
        "edge_above_2_at_start": int((start > 2).sum()),
        "edge_after_10_median": torch.nanmedian(edge[:, -1]).item(),
        "corr_edge_amplitude": corr,
        "worse_tasks": [
            {
                "task": i,
                "amplitude": float(amplitude[i]),
                "edge": [float(e) for e in edge[i]],
                "mse": [float(m) for m in mse[i]],
            }
            for i in worse.nonzero().flatten().tolist()
        ],
    }
    print(f"\n{name} (alpha = {alpha:g}), {len(start)} test tasks, 5-shot")
    print(
        f"  alpha*lambda at the initialisation: median {q[1]:.2f} (10%: {q[0]:.2f}, 90%: {q[2]:.2f}); above 2 on "
        f"{summary['edge_above_2_at_start']} tasks; correlation with the amplitude {corr:+.2f}"
    )
    print(f"  alpha*lambda after 10 steps: median {summary['edge_after_10_median']:.2f}")
    for task in summary["worse_tasks"]:
        edges = " ".join(f"{e:.2f}" for e in task["edge"][:6])
        print(
            f"  task {task['task']:>3}, A={task['amplitude']:.2f}: MSE {task['mse'][0]:.3g} -> {task['mse'][1]:.3g} "
            f"(1) -> {task['mse'][5]:.3g} (5) -> {task['mse'][10]:.3g} (10); alpha*lambda, steps 0-5: {edges}"
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--inner-lr", type=float, help="alpha of the inner loop; default: the checkpoint's")
    parser.add_argument("--tasks", type=int, default=TASKS)
    parser.add_argument("--out", type=Path, help="write the summaries as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(provenance("the checkpoints' own (test tasks)", 1))
    summaries = {
        str(path): report(str(path), sharpness_trajectories(path, args.inner_lr, args.tasks))
        for path in args.checkpoints
    }
    if args.out:
        write_json(summaries, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
