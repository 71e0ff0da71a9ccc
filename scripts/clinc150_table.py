"""The README's CLINC150 table: MAML, ANIL and FOMAML meta-trained with ``maml-train`` on the
``clinc150_5w1s`` / ``clinc150_5w5s`` presets for a fixed step budget, each scored by ``maml-eval``
on 600 test episodes (mean and 95% CI), next to the supervised nearest-class-mean baseline of
``scripts/clinc150_baseline.py`` on the same 600 episodes.

    MAML_DATA_ROOT=/path/to/data python scripts/clinc150_table.py --steps 300 --out bench-out/clinc150

Runs one after another (each with ``trainer.num_threads`` threads); a run already finished in
``--out`` (its eval.json there) is not run again, so the script can be resumed. Prints a markdown
table with the seed, git commit, torch version, threads and wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from toolkit import provenance

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=log.parent)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[:2])} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--model", default="text_bag")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--algorithms", nargs="+", default=["maml", "anil", "fomaml"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "clinc150")
    parser.add_argument("--baseline", action="store_true", help="also run scripts/clinc150_baseline.py")
    args = parser.parse_args()
    args.out = args.out.resolve()  # the runs work in their own folders, so every path is absolute
    args.out.mkdir(parents=True, exist_ok=True)
    git = ["git", "describe", "--always", "--dirty"]
    commit = subprocess.run(git, cwd=ROOT, capture_output=True, text=True).stdout.strip()  # what the runs ran
    rows, commits = [], set()
    for shots in args.shots:
        preset = f"clinc150_{args.ways}w{shots}s"
        for algo in args.algorithms:
            name = f"{preset}_{args.model}_{algo}_s{args.steps}"
            folder = args.out / name
            folder.mkdir(exist_ok=True)
            result = folder / "eval.json"
            trained = folder / "train/metrics.json"
            if not result.is_file():
                train_s = json.loads(trained.read_text())["wall_time_s"] if trained.is_file() else None
                train_s = train_s or run(
                    [
                        str(BIN / "maml-train"),
                        f"experiment={preset}",
                        f"model={args.model}",
                        f"inner_loop={algo}",
                        "inner_loop.steps=5",
                        "inner_loop.lr=0.5",
                        "inner_loop.eval_steps=10",
                        f"seed={args.seed}",
                        f"trainer.max_steps={args.steps}",
                        f"trainer.val_every={max(args.steps // 3, 1)}",
                        "trainer.val_tasks=100",
                        f"trainer.num_threads={args.threads}",
                        "trainer.progress=false",
                        "hydra.run.dir=train",
                    ],
                    folder / "train.log",
                )
                eval_s = run(
                    [
                        str(BIN / "maml-eval"),
                        f"checkpoint={folder / 'train/checkpoints/best.pt'}",
                        f"eval.episodes={args.episodes}",
                        f"eval.output={result}",
                        "hydra.run.dir=eval",
                    ],
                    folder / "eval.log",
                )
                times = {"train_s": train_s, "eval_s": eval_s, "commit": commit}
                (folder / "times.json").write_text(json.dumps(times))
            res = json.loads(result.read_text())
            times = json.loads((folder / "times.json").read_text())
            commits.add(times.get("commit", "?"))
            rows.append((preset, algo.upper(), res["mean"], res["ci95"], times["train_s"], times["eval_s"]))
            print(f"{name}: {100 * res['mean']:.2f} +- {100 * res['ci95']:.2f}", flush=True)
        if args.baseline:
            result = args.out / f"{preset}_{args.model}_baseline.json"
            if not result.is_file():
                run(
                    [
                        sys.executable,
                        str(ROOT / "scripts" / "clinc150_baseline.py"),
                        f"--ways={args.ways}",
                        f"--shots={shots}",
                        f"--model={args.model}",
                        f"--seed={args.seed}",
                        f"--episodes={args.episodes}",
                        f"--threads={args.threads}",
                        f"--json={result}",
                    ],
                    args.out / f"{preset}_{args.model}_baseline.log",
                )
            res = json.loads(result.read_text())
            rows.append((preset, "supervised + NCM", res["mean"], res["ci95"], res["train_s"], res["eval_s"]))

    print(f"\n{provenance(args.seed, args.threads, ', '.join(sorted(commits)) or None)}")
    print(
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores, shared), model {args.model}, "
        f"{args.steps} meta-steps, {args.episodes} test episodes\n"
    )
    print("| episodes | method | accuracy (%) | 95% CI | train (s) | eval (s) |")
    print("|---|---|---|---|---|---|")
    for preset, method, mean, ci, train_s, eval_s in rows:
        print(f"| {preset} | {method} | {100 * mean:.2f} | ± {100 * ci:.2f} | {train_s:.0f} | {eval_s:.0f} |")


if __name__ == "__main__":
    main()
