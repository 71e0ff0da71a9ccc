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
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from maml_cli.cli.common import reports_errors, run_cli
from maml_cli.config import config_dir, register_configs, validate_eval_config, validate_run_config
from maml_cli.engine.build import build_run
from maml_cli.engine.checkpoint import load_checkpoint, write_json
from maml_cli.engine.device import resolve_device
from maml_cli.engine.evaluation import Estimate, score_ensemble, score_tasks
from maml_cli.engine.rng import seed_everything
from maml_cli.errors import CheckpointError, ConfigError, MamlError

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
    per_step = [Estimate.of(row) for row in scores]
    metric = run.tasks.metric_name
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
        "pre_adaptation_mean": per_step[0].mean,
        "pre_adaptation_ci95": per_step[0].ci95,
        "per_step": [{"steps": k, "mean": e.mean, "ci95": e.ci95} for k, e in enumerate(per_step)],
        # Tasks whose final score is NaN or inf (plain SGD can diverge on an unlucky support set);
        # one such task makes the mean infinite, so say how many there were.
        "non_finite_tasks": int((~torch.isfinite(scores[-1])).sum()),
        "ensemble_top_k": k,
        # The members' training steps and validation scores (empty: the checkpoint alone).
        "ensemble": [{"step": m["step"], "val": m["value"]} for m in members],
        "device": str(device),
    }
    write_json(result, output)
    _print_table(result, per_step, output)
    return result


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


def _member_algorithm(template: torch.nn.Module, path: Path) -> torch.nn.Module:
    state = load_checkpoint(path)
    member = copy.deepcopy(template)
    try:
        member.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"ensemble member {path} does not fit the run's model ({str(exc).splitlines()[0][:200]})"
        ) from None
    return member


def _print_table(result: dict[str, Any], per_step: list[Estimate], output: Path) -> None:
    metric = result["metric"]
    scale, unit = (100.0, "%") if metric == "accuracy" else (1.0, "")
    what = f"checkpoint step {result['checkpoint_step']}"
    if result["ensemble"]:
        what = f"ensemble of the {len(result['ensemble'])} best validated checkpoints (steps "
        what += ", ".join(str(m["step"]) for m in result["ensemble"]) + ")"
    print(f"{result['episodes']} {result['split']} tasks, {result['shots']}-shot, {what}")
    print(f"{'adaptation':<16}{metric + (' (%)' if unit else ''):>14}{'95% CI':>12}")
    for k in _steps_to_show(result["steps"]):
        label = "before" if k == 0 else f"after {k} step{'s' if k > 1 else ''}"
        mean, ci = scale * per_step[k].mean, scale * per_step[k].ci95
        print(f"{label:<16}{mean:>14.4f}{'± ' + format(ci, '.4f'):>12}")
    if result["non_finite_tasks"]:
        print(
            f"warning: adaptation diverged (NaN/inf) on {result['non_finite_tasks']} of "
            f"{result['episodes']} tasks; a smaller inner_loop.lr or fewer eval.steps avoids it"
        )
    print(f"wrote {output}")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
@reports_errors
def _eval(cfg: DictConfig) -> float:
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError("maml-eval needs checkpoint=PATH (a .pt file written by maml-train)")
    with torch.inference_mode(False):
        result = evaluate_checkpoint(cfg, Path(HydraConfig.get().runtime.output_dir))
    return result["mean"]


def main() -> None:
    register_configs()
    run_cli(_main)


def _main() -> None:
    try:
        path = _checkpoint_argument(sys.argv[1:])
        base: dict[str, Any] = {}
        if path is not None:
            state = load_checkpoint(path)
            _loaded[path] = state
            base = state["config"]
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
