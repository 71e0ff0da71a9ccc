"""``maml-eval``: score a checkpoint on held-out tasks, before and after adaptation.

The run's config travels inside the checkpoint. Before Hydra composes, the checkpoint named on
the command line is read and its config is registered as the base of ``eval.yaml``, so every key
of the run can be overridden on the command line with the usual syntax (``dataset.shots=5``) and
a misspelt key fails just as it does for ``maml-train``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from maml_cli.cli import run_start
from maml_cli.cli.common import reports_errors, run_cli
from maml_cli.cli.job_log import log_to_file
from maml_cli.config import config_dir, register_configs, validate_eval_config, validate_run_config
from maml_cli.config.compat import upgrade_run_config
from maml_cli.engine import run_dir
from maml_cli.engine.build import build_algorithm, build_model, build_run
from maml_cli.engine.checkpoint import load_checkpoint, write_json
from maml_cli.engine.device import resolve_device
from maml_cli.engine.evaluation import (
    DIVERGENCE_FACTOR,
    StepScore,
    display_scale,
    score_ensemble,
    score_tasks,
    summarise,
)
from maml_cli.engine.rng import seed_everything
from maml_cli.errors import CheckpointError, ConfigError, MamlError
from maml_cli.threads import configure_threads

log = logging.getLogger("maml_cli")
_loaded: dict[str, dict[str, Any]] = {}


def _checkpoint_argument(argv: list[str]) -> str | None:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(("checkpoint=", "++checkpoint="))]
    if not values:
        return None
    if len(values) > 1 or "," in values[-1]:
        raise ConfigError("maml-eval takes one checkpoint=PATH per run; run it once per checkpoint")
    return values[-1]


def _ensure_writable(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"cannot write eval.output={path}: {path.parent} is not a writable directory "
            f"({exc.strerror or exc}); choose a writable path"
        ) from None


def _steps_to_show(steps: int) -> list[int]:
    if steps <= 3:  # RL's 0..3 steps (the MAML paper's Figure 4): every one
        return list(range(steps + 1))
    return sorted({0, 1, 5, 10, steps} & set(range(steps + 1)))


def evaluate_checkpoint(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` with the (overridden) run config in ``cfg``; returns eval.json."""
    validate_eval_config(cfg.eval)
    path = str(cfg.checkpoint)
    state = _loaded.get(path) or load_checkpoint(path)
    run_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("checkpoint", "eval")])
    validate_run_config(run_cfg)
    output = Path(cfg.eval.output) if cfg.eval.output else run_dir / "eval.json"
    _ensure_writable(output)

    device = resolve_device(run_cfg.trainer.device)
    seed_everything(int(run_cfg.seed))
    run = build_run(run_cfg, device)
    configure_threads(cfg.eval.num_threads, run.algorithm.model)
    try:
        run.algorithm.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit its model config ({str(exc).splitlines()[0][:200]}); "
            "do not override model.* when evaluating"
        ) from None
    steps = int(cfg.eval.steps) if cfg.eval.steps is not None else int(run.algorithm.eval_steps)
    episodes, split = int(cfg.eval.episodes), str(cfg.eval.split)
    k = int(cfg.eval.ensemble_top_k)
    members: list[dict[str, Any]] = []
    if k > 1:
        members = _top_k_members(Path(path), k)
        algorithms = [_member_algorithm(run.algorithm, Path(path).parent / "top" / m["file"]) for m in members]
        scores = score_ensemble(algorithms, run.tasks, split, episodes, steps, int(cfg.eval.batch_size))
    else:
        scores = score_tasks(run.algorithm, run.tasks, split, episodes, steps, int(cfg.eval.batch_size))
    per_step = summarise(scores, run.tasks.higher_is_better)
    metric = run.tasks.metric_name
    baselines = [
        _score_baseline(name, run, run_cfg, device, split, episodes, steps, int(cfg.eval.batch_size))
        for name in cfg.eval.get("baselines") or []
    ]
    result = {
        "checkpoint": str(Path(path).resolve()),
        "checkpoint_step": int(state["step"]),
        "metric": metric,
        "higher_is_better": run.tasks.higher_is_better,
        "split": split,
        "episodes": episodes,
        "steps": steps,
        "shots": int(getattr(run.tasks, "eval_shots", run_cfg.dataset.shots)),
        "query": int(getattr(run.tasks, "eval_query", run_cfg.dataset.query)),
        "ways": getattr(run.tasks, "ways", None),
        "mean": per_step[-1].mean,
        "ci95": per_step[-1].ci95,
        "median": per_step[-1].median,
        "mean_stable": per_step[-1].mean_stable,
        "pre_adaptation_mean": per_step[0].mean,
        "pre_adaptation_ci95": per_step[0].ci95,
        # Plain SGD can blow up on an unlucky support set, and one such task can make the mean
        # anything; so each step says how many tasks diverged, the median, and the mean without them.
        "diverged_tasks": per_step[-1].diverged_tasks,
        "divergence_rule": (
            "NaN or inf"
            + (
                ""
                if run.tasks.higher_is_better
                else f", or above {DIVERGENCE_FACTOR:g}x the task's loss before adaptation"
            )
        ),
        "per_step": [e.as_dict() for e in per_step],
        "non_finite_tasks": int((~torch.isfinite(scores[-1])).sum()),  # NaN or inf after the last step
        "ensemble_top_k": k,
        # The members' training steps and validation scores (empty: the checkpoint alone).
        "ensemble": [{"step": m["step"], "val": m["value"]} for m in members],
        "device": str(device),
        # Other initialisations scored on the same tasks, adapted the same way (eval.baselines).
        "baselines": [{"name": name, "per_step": [e.as_dict() for e in rows]} for name, rows in baselines],
    }
    write_json(result, output)
    _print_table(result, per_step, output, baselines)
    return result


def _score_baseline(
    name: str, run, run_cfg: DictConfig, device, split: str, episodes: int, steps: int, batch_size: int
):
    """``(name, per-step scores)`` of a baseline of ``eval.baselines``: ``random`` (the run's model
    as its seed initialises it, before any training) or another checkpoint of the same model."""
    if name == "random":
        seed_everything(int(run_cfg.seed))
        model = build_model(run_cfg, device, getattr(run.tasks, "input_shape", None))
        algorithm = build_algorithm(run_cfg, model, run.tasks.loss)
    else:
        if not Path(name).is_file():
            raise ConfigError(
                f"eval.baselines: {name} is neither 'random' nor a checkpoint file; give the path of a "
                "maml-train checkpoint of the same model (e.g. a run with inner_loop.pretrain=true)"
            )
        algorithm = _member_algorithm(run.algorithm, Path(name), what="baseline")
    scores = score_tasks(algorithm, run.tasks, split, episodes, steps, batch_size)
    return name, summarise(scores, run.tasks.higher_is_better)


def _top_k_members(checkpoint: Path, k: int) -> list[dict[str, Any]]:
    """The run's ``k`` best validated checkpoints, from ``checkpoints/top/index.json`` next to
    ``checkpoint`` (written by ``maml-train trainer.keep_top_k=K``)."""
    index = checkpoint.parent / "top" / "index.json"
    how = f"train with trainer.keep_top_k>={k}, or evaluate with eval.ensemble_top_k=1"
    if not index.is_file():
        raise ConfigError(f"eval.ensemble_top_k={k} needs {index}, which does not exist; {how}")
    try:
        entries = json.loads(index.read_text())["checkpoints"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read {index} ({exc}); {how}") from None
    if len(entries) < k:
        raise ConfigError(f"eval.ensemble_top_k={k} but {index} lists {len(entries)} checkpoints; {how}")
    return entries[:k]  # kept best first


def _member_algorithm(template: torch.nn.Module, path: Path, what: str = "ensemble member") -> torch.nn.Module:
    state = load_checkpoint(path)
    member = copy.deepcopy(template)
    try:
        member.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{what} {path} does not fit the run's model ({str(exc).splitlines()[0][:200]})"
        ) from None
    return member


def _number(value: float) -> str:
    """A table cell of at most 10 characters for any magnitude: fixed point where it reads well,
    scientific notation beyond that."""
    if not math.isfinite(value):
        return str(value)
    if value != 0 and not 1e-3 <= abs(value) < 1e5:
        return f"{value:.3e}"
    return f"{value:.4f}"


def format_table(result: dict[str, Any], per_step: list[StepScore]) -> list[str]:
    """The lines ``maml-eval`` prints (and writes to its log): mean ± 95% CI over all tasks, and
    beside it the median, the mean over the tasks that did not diverge, and how many did."""
    metric = result["metric"]
    scale, unit = display_scale(metric)
    what = f"checkpoint step {result['checkpoint_step']}"
    if result["ensemble"]:
        what = f"ensemble of the {len(result['ensemble'])} best validated checkpoints (steps "
        what += ", ".join(str(m["step"]) for m in result["ensemble"]) + ")"
    data = f"{result['shots']} episodes each" if result["metric"] == "return" else f"{result['shots']}-shot"
    lines = [f"{result['episodes']} {result['split']} tasks, {data}, {what}"]
    header = ("adaptation", metric + (" (%)" if unit else ""), "95% CI", "median", "mean stable", "diverged")
    lines.append(f"{header[0]:<16}{header[1]:>14}{header[2]:>13}{header[3]:>12}{header[4]:>13}{header[5]:>10}")
    lines += _step_rows(per_step, result["steps"], scale)
    diverged = per_step[-1].diverged_tasks
    if diverged:
        lines.append(
            f"note: adaptation diverged on {diverged} of {result['episodes']} tasks after {result['steps']} steps "
            f"({result['divergence_rule']}); 'mean stable' leaves them out. A smaller inner_loop.lr or fewer "
            "eval.steps avoids it"
        )
    return lines


def _baseline_lines(result: dict[str, Any], baselines) -> list[str]:
    """One row per baseline and number of steps: the same columns as the checkpoint's table."""
    scale, _ = display_scale(result["metric"])
    lines = []
    for name, rows in baselines:
        lines.append(f"baseline {name}:")
        lines += _step_rows(rows, result["steps"], scale, indent="  ")
    return lines


def _step_rows(per_step: list[StepScore], steps: int, scale: float, indent: str = "") -> list[str]:
    """The table's rows: for each number of steps shown, mean, CI, median, stable mean, diverged."""
    lines = []
    for k in _steps_to_show(steps):
        row = per_step[k]
        label = indent + ("before" if k == 0 else f"after {k} step{'s' if k > 1 else ''}")
        cells = [_number(scale * v) for v in (row.mean, row.ci95, row.median, row.mean_stable)]
        lines.append(
            f"{label:<16}{cells[0]:>14}{'± ' + cells[1]:>13}{cells[2]:>12}{cells[3]:>13}{row.diverged_tasks:>10}"
        )
    return lines


def _print_table(result: dict[str, Any], per_step: list[StepScore], output: Path, baselines=()) -> None:
    lines = [*format_table(result, per_step), *_baseline_lines(result, baselines), f"wrote {output}"]
    for line in lines:
        print(line)
    log_to_file("\n".join(lines))


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
@reports_errors
def _eval(cfg: DictConfig) -> float:
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError("maml-eval needs checkpoint=PATH (a .pt file written by maml-train)")
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    with torch.inference_mode(False), run_dir.locked(output_dir):
        result = evaluate_checkpoint(cfg, output_dir)
    return result["mean"]


def main() -> None:
    register_configs()
    run_cli(_main)


def _main() -> None:
    run_start.lock_explicit_run_dir(sys.argv[1:])
    try:
        path = _checkpoint_argument(sys.argv[1:])
        base: dict[str, Any] = {}
        if path is not None:
            state = load_checkpoint(path)
            _loaded[path] = state
            base = upgrade_run_config(state["config"])
    except MamlError as exc:
        # --help should work without a checkpoint; any real run reports the problem.
        if any(flag in sys.argv for flag in ("--help", "-h", "--hydra-help")):
            base = {}
        else:
            raise exc
    ConfigStore.instance().store(name="_checkpoint_run", node=base)
    _eval()


if __name__ == "__main__":
    main()
