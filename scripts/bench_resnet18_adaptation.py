#!/usr/bin/env python
"""Time and peak memory of a meta-step of torchvision's ResNet-18: what the inner loop adapts.

Setting: ``model=torchvision model.name=resnet18`` (11.2 M parameters) on 5-way 1-shot 84x84 RGB
tasks with 15 query images per class, 4 tasks per meta-batch, second-order MAML with one inner
step, Adam as the meta-optimizer. The images are random tensors (the cost of a step does not
depend on what the pixels show). Three settings:

* ``full``: every parameter adapts in the inner loop and is meta-learned (MAML);
* ``head``: only ``fc`` adapts (``inner_loop.adapt=[fc.*]``), the body is meta-learned (ANIL's
  split, Raghu et al., 2020);
* ``layer4+fc``: ``conv1, bn1, layer1-3`` frozen (``model.freeze``: neither adapted nor
  meta-learned, as for a pretrained body), ``layer4`` and ``fc`` adapt.

Each setting runs in a fresh process: it builds the model and algorithm, records its peak resident
set size (``resource.getrusage``: torch's CPU allocations are invisible to ``tracemalloc``), then
runs ``--meta-steps`` meta-steps (meta-gradient and Adam step). Memory is the peak RSS during the
steps minus that baseline; time is the median meta-step after the first (which warms up).

    python scripts/bench_resnet18_adaptation.py [--meta-steps 4] [--tasks 4] [--threads N] [--out DIR]
"""

from __future__ import annotations

import argparse
import fnmatch
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from toolkit import git_commit, provenance

WAYS, SHOTS, QUERY, SIZE = 5, 1, 15, 84
SETTINGS = {
    "full": {"adapt": None, "freeze": []},
    "head": {"adapt": ["fc.*"], "freeze": []},
    "layer4+fc": {"adapt": ["layer4.*", "fc.*"], "freeze": ["conv1.*", "bn1.*", "layer1.*", "layer2.*", "layer3.*"]},
}


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(setting: str, tasks: int, meta_steps: int, lr: float, threads: int | None) -> dict:
    """One setting, in this process."""
    import torch
    import torch.nn.functional as F

    from maml_cli.algorithms import MAML
    from maml_cli.data.tasks import TaskBatch
    from maml_cli.models import torchvision_model

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision_model("resnet18", in_channels=3, out_features=WAYS)
    options = SETTINGS[setting]
    for name, param in model.named_parameters():  # what model.freeze does, with the same globs
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in options["freeze"]):
            param.requires_grad_(False)
    kwargs = {"steps": 1, "lr": lr, "first_order": False, "eval_steps": 1}
    if options["adapt"] is None:
        algorithm = MAML(model, F.cross_entropy, **kwargs)
    elif "adapt" in inspect.signature(MAML.__init__).parameters:
        algorithm = MAML(model, F.cross_entropy, adapt=options["adapt"], **kwargs)
    elif options["adapt"] == ["fc.*"]:  # before inner_loop.adapt existed: ANIL is head-only MAML
        from maml_cli.algorithms.anil import ANIL

        algorithm = ANIL(model, F.cross_entropy, head="fc", **kwargs)
    else:
        raise SystemExit("this maml-cli has no inner_loop.adapt: cannot bench layer4+fc")
    params = [p for p in algorithm.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    support_y = torch.arange(WAYS).repeat_interleave(SHOTS).expand(tasks, -1)
    query_y = torch.arange(WAYS).repeat_interleave(QUERY).expand(tasks, -1)

    def sample() -> TaskBatch:
        support = torch.randn(tasks, WAYS * SHOTS, 3, SIZE, SIZE, generator=g)
        query = torch.randn(tasks, WAYS * QUERY, 3, SIZE, SIZE, generator=g)
        return TaskBatch(support, support_y, query, query_y)

    batches = [sample() for _ in range(meta_steps)]
    baseline = _rss_peak_mb()
    seconds = []
    for batch in batches:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = algorithm.meta_backward(batch)
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    peak = _rss_peak_mb()
    return {
        "setting": setting,
        "adapted": sum(p.numel() for n, p in model.named_parameters() if _adapts(algorithm, n)),
        "meta_learned": sum(p.numel() for p in params),
        "parameters": sum(p.numel() for p in model.parameters()),
        "strategy": algorithm.strategy(),
        "baseline_mb": round(baseline, 1),
        "peak_mb": round(peak, 1),
        "step_memory_mb": round(peak - baseline, 1),
        "median_step_s": round(statistics.median(seconds[1:] or seconds), 3),
        "step_s": [round(s, 3) for s in seconds],
        "loss_after": float(out.loss_after.mean()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _adapts(algorithm, name: str) -> bool:
    """Whether parameter ``name`` of the model adapts in the inner loop."""
    adapted = getattr(algorithm, "_adapted", None)
    if adapted is not None:
        return name in adapted
    head = getattr(algorithm, "head", None)
    if isinstance(head, str):  # ANIL
        return name.startswith(head + ".")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--tasks", type=int, default=4, help="tasks per meta-batch")
    parser.add_argument("--meta-steps", type=int, default=4, help="meta-steps per setting (the first is not timed)")
    parser.add_argument("--lr", type=float, default=0.01, help="inner learning rate")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/resnet18_adaptation"))
    parser.add_argument("--setting", help=argparse.SUPPRESS)  # internal: run one setting, print its JSON
    args = parser.parse_args()

    if args.setting:
        print(json.dumps(measure(args.setting, args.tasks, args.meta_steps, args.lr, args.threads)))
        return

    commit = git_commit()  # before the settings run: the tree may change meanwhile
    rows = []
    common = ["--tasks", str(args.tasks), "--meta-steps", str(args.meta_steps), "--lr", str(args.lr)]
    common += ["--threads", str(args.threads)] if args.threads else []
    for setting in args.settings:
        proc = subprocess.run(
            [sys.executable, __file__, "--setting", setting, *common],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if proc.returncode != 0:
            sys.exit(f"setting {setting} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  {setting}: {rows[-1]['median_step_s']} s, {rows[-1]['step_memory_mb']} MB", file=sys.stderr)

    first = rows[0]
    print(
        f"ResNet-18 (torchvision, {first['parameters'] / 1e6:.1f} M parameters), random 5-way 1-shot 84x84 RGB tasks "
        f"with {QUERY} queries per class, {args.tasks} task(s) per meta-batch, second-order MAML, 1 inner step"
    )
    print(provenance(0, first["threads"], commit))
    print(f"{os.cpu_count()} cores; task batching {first['strategy']}")
    print("time: median meta-step after the first; memory: peak RSS during the steps minus the RSS before them")
    header = ("adapted in the inner loop", "adapted", "meta-learned", "s / meta-step", "MB")
    print("| {:<42} | {:>12} | {:>12} | {:>13} | {:>6} |".format(*header))
    print(f"|{'-' * 44}|{'-' * 13}:|{'-' * 13}:|{'-' * 14}:|{'-' * 7}:|")
    names = {
        "full": "all (MAML)",
        "head": "fc only (adapt=[fc.*])",
        "layer4+fc": "layer4, fc (conv1, bn1, layer1-3 frozen)",
    }
    for r in rows:
        print(
            f"| {names[r['setting']]:<42} | {r['adapted']:>12,} | {r['meta_learned']:>12,} "
            f"| {r['median_step_s']:>13.2f} | {r['step_memory_mb']:>6.0f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
