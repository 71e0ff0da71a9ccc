#!/usr/bin/env python
"""MAML-RL against the MAML paper's baselines (Finn et al., 2017, Sec. 5.3, Figures 4 and 5).

Trains MAML (``experiment=maml_rl_nav2d`` or ``maml_rl_halfcheetah_vel``) for a wall-time budget,
then the paper's "pretrained" baseline (``inner_loop.pretrain=true``: one policy trained on all
tasks jointly with the same TRPO outer loop) for as many meta-iterations as MAML ran, and scores
both, with a random initialisation, on the same held-out goals with ``maml-eval``: the average
return after 0..N policy-gradient steps with a 95% confidence interval. Prints a table, the
training time and environment steps per second, and writes ``results.json`` and
``return_vs_steps.png`` (with the paper's reference points where they are known) into ``--out``.

A finished run dir is reused (delete it to retrain): the expensive part is the training.

    python scripts/rl_benchmark.py nav2d --minutes 45 --out bench-out/rl_nav2d
    python scripts/rl_benchmark.py halfcheetah_vel --minutes 60 --episodes 40 --out bench-out/rl_cheetah
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from toolkit import BIN, TRAIN_DEFAULT_THREADS, git_commit, maml_eval, provenance

PRESETS = {"nav2d": "maml_rl_nav2d", "halfcheetah_vel": "maml_rl_halfcheetah_vel"}

#: What the paper's figures show, as far as they could be read here. The figures are plots, not
#: tables, and no released log lists their values, so these are approximate readings of the
#: curves: for HalfCheetah goal velocity (Figure 5, left) the average return before and after
#: one step. For 2D navigation (Figure 4, a log-scale plot) no reading precise enough to print
#: was available; the figure shows MAML above the pretrained policy and both above a random
#: initialisation after one step, with returns between -100 and -10.
PAPER = {
    "halfcheetah_vel": {"MAML": {0: -130.0, 1: -75.0}, "pretrained": {0: -155.0, 1: -130.0}},
}


def train(preset: str, run_dir: Path, seed: int, *overrides: str) -> dict:
    """``maml-train experiment=preset``, unless ``run_dir`` already holds a finished run."""
    metrics = run_dir / "metrics.json"
    if not metrics.exists():
        command = [str(BIN / "maml-train"), f"experiment={preset}", f"seed={seed}", f"hydra.run.dir={run_dir}"]
        subprocess.run([*command, "trainer.progress=false", *overrides], check=True)
    return json.loads(metrics.read_text())


def env_steps_per_second(run: dict, tasks: int, rollouts: int, horizon: int, rounds: int) -> float:
    """Environment steps the training collected per second of its wall time (an upper bound of
    the steps, as an episode that ends early is still stepped to the horizon as a masked row)."""
    return run["steps"] * tasks * rollouts * horizon * rounds / run["wall_time_s"]


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    styles = {"MAML": ("tab:green", "-"), "pretrained": ("tab:blue", "--"), "random": ("black", ":")}
    for name, rows in result["curves"].items():
        color, line = styles[name]
        steps = [r["steps"] for r in rows]
        ax.errorbar(
            steps,
            [r["mean"] for r in rows],
            yerr=[r["ci95"] for r in rows],
            color=color,
            ls=line,
            marker="o",
            capsize=3,
            label=f"{name} (ours)" if name == "MAML" else name,
        )
        for k, value in PAPER.get(result["task"], {}).get(name, {}).items():
            ax.plot([k], [value], marker="*", ms=11, color=color, ls="none")
    if result["task"] in PAPER:
        ax.plot([], [], marker="*", ms=11, color="grey", ls="none", label="paper (read off its figure)")
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("average return")
    ax.set_xticks(range(len(next(iter(result["curves"].values())))))
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=sorted(PRESETS))
    parser.add_argument("--minutes", type=float, default=45.0, help="MAML's training budget (wall time)")
    parser.add_argument("--episodes", type=int, default=100, help="held-out goals scored by maml-eval")
    parser.add_argument("--steps", type=int, default=3, help="adaptation steps scored (the paper: 0..3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-pretrained",
        action="store_true",
        help="skip the pretrained baseline (its training costs as much sampling as MAML's)",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="more maml-train overrides for both runs")
    args = parser.parse_intermixed_args()
    out = args.out or Path("bench-out") / f"rl_{args.task}"
    out.mkdir(parents=True, exist_ok=True)
    preset, commit = PRESETS[args.task], git_commit()
    started = time.perf_counter()

    maml = train(preset, out / "maml", args.seed, f"trainer.max_minutes={args.minutes}", *args.overrides)
    baselines, pretrained = ["random"], None
    if not args.no_pretrained:
        pretrained = train(
            preset,
            out / "pretrained",
            args.seed,
            f"trainer.max_steps={maml['steps']}",
            "inner_loop.pretrain=true",
            *args.overrides,
        )
        baselines.insert(0, str(out / "pretrained/checkpoints/best.pt"))
    evaluated = maml_eval(
        out / "maml/checkpoints/best.pt",
        out / "eval.json",
        out / "eval",
        f"eval.episodes={args.episodes}",
        f"eval.steps={args.steps}",
        f"eval.baselines=[{','.join(baselines)}]",
        "eval.batch_size=20",
        quiet=True,
    )
    run_config = _run_config(out / "maml")
    tasks, rollouts = run_config["trainer"]["meta_batch_size"], run_config["dataset"]["rollouts"]
    horizon, inner = run_config["dataset"]["horizon"], run_config["inner_loop"]["steps"]
    curves = {"MAML": evaluated["per_step"]}
    for baseline in evaluated["baselines"]:
        curves["pretrained" if baseline["name"] != "random" else "random"] = baseline["per_step"]
    result = {
        "task": args.task,
        "curves": curves,
        "maml_steps": maml["steps"],
        "maml_wall_s": maml["wall_time_s"],
        "maml_best": maml["best"],
        "pretrained_steps": pretrained and pretrained["steps"],
        "pretrained_wall_s": pretrained and pretrained["wall_time_s"],
        "env_steps_per_s": env_steps_per_second(maml, tasks, rollouts, horizon, inner + 1),
        "sampling_env_steps_per_s": sampling_speed(run_config, out / "maml/checkpoints/best.pt"),
        "episodes": args.episodes,
        "seed": args.seed,
        "commit": commit,
        "history": maml["history"],
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "return_vs_steps.png", f"{args.task}: average return on {args.episodes} held-out goals")

    print(
        f"MAML-RL on {args.task}: {maml['steps']} meta-iterations in {maml['wall_time_s'] / 60:.1f} min "
        f"(median {maml['median_step_ms'] / 1000:.1f} s each), {result['env_steps_per_s']:,.0f} env steps/s "
        f"over the whole training; collecting alone {result['sampling_env_steps_per_s']:,.0f} env steps/s"
    )
    if pretrained:
        print(f"pretrained baseline: {pretrained['steps']} iterations in {pretrained['wall_time_s'] / 60:.1f} min")
    print(f"average return on {args.episodes} held-out goals (test split), mean ± 95% CI")
    header = "".join(f"{'after ' + str(k) if k else 'before':>18}" for k in range(args.steps + 1))
    print(f"{'':<12}{header}")
    for name, rows in curves.items():
        print(f"{name:<12}" + "".join(f"{r['mean']:>10.2f} ± {r['ci95']:<5.2f}" for r in rows))
    for name, points in PAPER.get(args.task, {}).items():
        print(
            f"{'paper ' + name:<12}"
            + "".join(f"{'~' + format(points[k], '.0f') if k in points else '':>18}" for k in range(args.steps + 1))
        )
    others = [b for b in ("pretrained", "random") if b in curves]
    beats = all(curves["MAML"][1]["mean"] > curves[b][1]["mean"] for b in others)
    print(f"after one step MAML {'beats' if beats else 'does NOT beat'} {' and '.join(others)}")
    minutes = (time.perf_counter() - started) / 60
    print(f"wrote {out / 'results.json'} and {out / 'return_vs_steps.png'} ({minutes:.1f} min)")
    print(provenance(args.seed, TRAIN_DEFAULT_THREADS, commit))


def _run_config(run_dir: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra/config.yaml"))


def sampling_speed(run_config: dict, checkpoint: Path, repeats: int = 2) -> float:
    """Environment steps per second of collecting one meta-batch of episodes with the trained
    policy (the policy's forward passes included, the learning not), best of ``repeats``."""
    import torch
    from omegaconf import OmegaConf

    from maml_cli.engine.build import build_run
    from maml_cli.engine.checkpoint import load_checkpoint
    from maml_cli.rl.maml_rl import MAMLRL

    torch.set_num_threads(1)
    run = build_run(OmegaConf.create(run_config), torch.device("cpu"))
    algorithm: MAMLRL = run.algorithm
    algorithm.load_state_dict(load_checkpoint(checkpoint)["model"])
    tasks = run_config["trainer"]["meta_batch_size"]
    batch = run.tasks.sample(tasks, torch.Generator().manual_seed(0))
    params = {k: v.detach().unsqueeze(0).expand(tasks, *v.shape) for k, v in algorithm._theta().items()}
    best = float("inf")
    for _ in range(repeats):
        tick = time.perf_counter()
        batch.rollouts_of(algorithm.policy, params, round=0)
        best = min(best, time.perf_counter() - tick)
    return tasks * run.tasks.rollouts * run.tasks.env.horizon / best


if __name__ == "__main__":
    main()
