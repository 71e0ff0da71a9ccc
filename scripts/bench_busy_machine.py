#!/usr/bin/env python
"""Meta-step time alone and next to competing runs, before and after the thread settings.

On a shared machine torch's OpenMP threads spin while they wait for work, and two processes that
each use every core slow each other down far more than their share of the cores would explain.
This measures it in the real trainer: for each setting, the median step time (from the run's
``metrics.json``) of one ``maml-train`` process alone, next to one and next to two identical
``maml-train`` processes that were started first and are stopped after it.

Arms:
- ``before``: what the toolkit did before it set threads: torch's default thread count (every
  core) and GNU OpenMP's default spin-wait (``GOMP_SPINCOUNT=300000``, its value when unset);
- ``after``: the toolkit's defaults (``trainer.num_threads`` unset, the short spin it sets).
- ``threads=N`` / ``threads=N,passive``: other settings to compare, for choosing the defaults.

    python scripts/bench_busy_machine.py [--settings sinusoid omniglot] [--arms before after]
        [--rivals 0 1 2] [--repeats 1] [--out bench-out/busy]

The Omniglot setting needs the real Omniglot under MAML_DATA_ROOT.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from toolkit import BIN, TRAIN_DEFAULT_THREADS, provenance

QUIET = ["trainer.figures=false", "trainer.progress=false", "trainer.val_every=1000000", "trainer.val_tasks=10"]
SETTINGS = {
    # The MAML paper's sinusoid setup (the defaults): MLP 1-40-40-1, 25 tasks, one inner step.
    "sinusoid": (["trainer.ckpt_every=1000000"], 1500),
    # The Conv-4 step of the speed table: Omniglot 5-way 1-shot, 15 query per class, 32 tasks.
    "omniglot": (
        [
            "experiment=omniglot_5w1s",
            "dataset.query=15",
            "inner_loop.steps=1",
            "trainer.meta_batch_size=32",
            "trainer.ckpt_every=1000000",
        ],
        8,
    ),
}


def arm_settings(arm: str) -> tuple[dict[str, str], list[str]]:
    """The environment and overrides of an arm."""
    cores = len(os.sched_getaffinity(0))
    if arm == "before":
        return {"GOMP_SPINCOUNT": "300000"}, [f"trainer.num_threads={cores}"]
    if arm == "after":
        return {}, []
    if arm.startswith("threads="):
        threads, _, policy = arm.removeprefix("threads=").partition(",")
        env = {"OMP_WAIT_POLICY": "PASSIVE"} if policy == "passive" else {}
        return env, [f"trainer.num_threads={threads}"]
    raise SystemExit(f"unknown arm {arm!r}: before, after, threads=N or threads=N,passive")


def launch(overrides: list[str], env: dict[str, str], run_dir: Path, steps: int) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    full_env.update(env)
    command = [str(BIN / "maml-train"), *overrides, *QUIET, f"trainer.max_steps={steps}", f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(command, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def measure(setting: str, arm: str, rivals: int, out: Path) -> float:
    """Median step time (ms) of one run next to ``rivals`` identical runs."""
    overrides, steps = SETTINGS[setting]
    env, arm_overrides = arm_settings(arm)
    cell = out / f"{setting}-{arm.replace('=', '').replace(',', '-')}-{rivals}rivals-{time.time_ns()}"
    others = [launch(overrides + arm_overrides, env, cell / f"rival{i}", 10**9) for i in range(rivals)]
    try:
        if others:
            time.sleep(8.0 if setting == "omniglot" else 4.0)  # let the rivals get to their steps
        proc = launch(overrides + arm_overrides, env, cell / "measured", steps)
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{setting}/{arm}: maml-train failed: {err.strip().splitlines()[-1:]}")
    finally:
        for other in others:
            other.terminate()
        for other in others:
            other.wait()
    return json.loads((cell / "measured/metrics.json").read_text())["median_step_ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--arms", nargs="+", default=["before", "after"])
    parser.add_argument("--rivals", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=1, help="cells per figure (median); arms alternate")
    parser.add_argument("--out", type=Path, default=Path("bench-out/busy"))
    args = parser.parse_args()

    results: dict[str, dict[str, dict[int, float]]] = {}
    for setting in args.settings:
        samples: dict[tuple[str, int], list[float]] = {}
        for rivals in args.rivals:
            for _ in range(args.repeats):
                for arm in args.arms:  # alternate the arms, so drifting load hits both alike
                    ms = measure(setting, arm, rivals, args.out)
                    samples.setdefault((arm, rivals), []).append(ms)
                    print(f"{setting:<9} {arm:<18} next to {rivals} rival(s): {ms:10.1f} ms/step", flush=True)
        table = {arm: {r: statistics.median(samples[(arm, r)]) for r in args.rivals} for arm in args.arms}
        results[setting] = table
        print(f"\n{setting}: median ms per meta-step (x its own time alone)")
        for arm in args.arms:
            threads = next((o.split("=", 1)[1] for o in arm_settings(arm)[1] if "num_threads=" in o), None)
            print(f"{arm:<18}" + provenance(0, int(threads) if threads else TRAIN_DEFAULT_THREADS))
        print(f"{'arm':<18}" + "".join(f"{f'{r} rival(s)':>22}" for r in args.rivals))
        for arm, row in table.items():
            alone = row.get(0)
            cells = [f"{ms:.1f}" + (f" ({ms / alone:.2f}x)" if alone else "") for ms in row.values()]
            print(f"{arm:<18}" + "".join(f"{c:>22}" for c in cells))
        if "before" in table and "after" in table and 0 in table["before"]:
            ratio = table["after"][0] / table["before"][0]
            print(f"after/before alone: {ratio:.2f}x (target <= 1.15)")
            if 1 in table["after"]:
                print(f"after, next to one rival / alone: {table['after'][1] / table['after'][0]:.2f}x (target <= 1.5)")
        print()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
