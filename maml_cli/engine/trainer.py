"""The episodic meta-training loop: sample, meta-step, validate, checkpoint, log.

The trainer knows nothing of how adaptation is done: it asks the algorithm for the meta-gradient
of a task batch (``meta_backward``) and for scores on held-out tasks (``evaluate``), and handles
everything around that: the meta-optimizer, schedule, validation, best/last checkpoints,
TensorBoard, the progress bar, exact resumption, Ctrl-C/SIGTERM and non-finite losses.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from maml_cli.config.validate import validate_run_config
from maml_cli.engine import tensorboard
from maml_cli.engine.build import build_run
from maml_cli.engine.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    remove_interrupted_checkpoint_writes,
    save_checkpoint,
    write_json,
)
from maml_cli.engine.device import resolve_device
from maml_cli.engine.evaluation import display_scale, summarise
from maml_cli.engine.figures import adaptation_figure
from maml_cli.engine.optim import build_optimizer, build_scheduler
from maml_cli.engine.resume import load_optimizer_state, resume_command
from maml_cli.engine.rng import capture_rng_states, seed_everything
from maml_cli.engine.world import NullWriter, SingleProcess
from maml_cli.errors import CheckpointError, NonFiniteLossError, TrainingInterrupted
from maml_cli.threads import configure_threads

log = logging.getLogger("maml_cli")


class Trainer:
    """Meta-trains the run described by ``cfg``, writing into ``run_dir``.

    ``world``: the other processes of a torchrun job (:mod:`maml_cli.distributed`); by default
    none. Rank 0 alone writes; every rank calls the same collectives at the same points.
    """

    def __init__(self, cfg: DictConfig, run_dir: str | Path, world: SingleProcess | None = None) -> None:
        validate_run_config(cfg)
        self.cfg = cfg
        self.world = world or SingleProcess()
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if self.world.is_main:
            for leftover in remove_interrupted_checkpoint_writes(self.run_dir):  # a killed run's partial writes
                log.info("removed %s, left by an interrupted write", leftover)
        self.device = self.world.place(resolve_device(cfg.trainer.device))
        seed_everything(int(cfg.seed))
        # A resumed run's checkpoint replaces the weights; a fresh one starts from the user's, if any.
        run = build_run(cfg, self.device, initial_weights=cfg.trainer.resume in (None, "auto"))
        self.tasks, self.algorithm = run.tasks, run.algorithm
        self.world.seed(int(cfg.seed))
        # None, or a governor that fits the thread count to the cores other processes leave idle.
        self.thread_governor = configure_threads(cfg.trainer.get("num_threads"), self.algorithm.model)
        self.optimizer = build_optimizer(cfg.optimizer, self.algorithm.parameters())
        self.scheduler = build_scheduler(cfg.optimizer, self.optimizer, int(cfg.trainer.max_steps))
        self.task_generator = torch.Generator(device=self.device)
        self.task_generator.manual_seed(int(cfg.seed))
        self.step = 0
        self.best: dict[str, Any] | None = None
        self.last_val: dict[str, Any] | None = None
        self.top: list[dict[str, Any]] = []  # the trainer.keep_top_k best validations, best first
        self._stop_signal: int | None = None
        self._started = time.perf_counter()  # reset when fit() starts
        self.history: list[dict[str, Any]] = []  # validation figures over steps and wall time
        self.step_seconds: list[float] = []  # wall time of each step this process ran, all included
        self._maybe_resume()
        self.world.start(self.algorithm, self.step)

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint; under torchrun a collective (every rank's random streams are gathered)."""
        return {
            "format_version": FORMAT_VERSION,
            "step": self.step,
            "model": self.algorithm.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **self.world.rng_state(capture_rng_states(self.task_generator)),
            "best": self.best,
            "last_val": self.last_val,
            "top": self.top,
            "history": self.history,
            "config": OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True),
            # What maml_cli.deploy needs of the inputs (image size, scaling...), without the data.
            "inputs": self.tasks.input_spec() if hasattr(self.tasks, "input_spec") else None,
        }

    def _maybe_resume(self) -> None:
        resume = self.cfg.trainer.resume
        if not resume:
            return
        path = self.ckpt_dir / "last.pt" if resume == "auto" else Path(resume)
        if resume == "auto" and not path.exists():
            log.info("trainer.resume=auto: no %s yet, starting from step 0", path)
            return
        state = load_checkpoint(path)
        try:
            self.algorithm.load_state_dict(state["model"])
            load_optimizer_state(self.optimizer, self.scheduler, state, self.cfg)  # with the config's rates
            self.world.restore_rng(state, self.task_generator)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0][:200]
            raise CheckpointError(
                f"checkpoint {path} does not fit this run's config ({first}); resume with the "
                "config it was trained with (see its run dir's .hydra/config.yaml)"
            ) from None
        self.step = int(state["step"])
        self.last_val = state.get("last_val")
        self.history = list(state.get("history") or [])
        same_run = path.resolve().parent == self.ckpt_dir.resolve()
        # A run dir's best.pt must exist in that dir: a resumed run in a new dir starts afresh.
        self.best = state.get("best") if same_run else None
        self.top = list(state.get("top") or []) if same_run else []
        log.info("resumed from %s at step %d", path, self.step)

    def _save(self, name: str, path: Path | None = None, **extra: Any) -> Path:
        path = path or self.ckpt_dir / name
        state = self.state_dict() | extra  # on every rank
        if self.world.is_main:
            save_checkpoint(state, path)
        return path

    # -- validation --------------------------------------------------------------------------

    def validate(self) -> dict[str, Any]:
        trainer = self.cfg.trainer
        # No meta-graph is kept at evaluation, so several meta-batches of tasks fit at once.
        scores = self.world.score_tasks(
            self.algorithm,
            self.tasks,
            "val",
            int(trainer.val_tasks),
            steps=self.algorithm.eval_steps,
            batch_size=int(trainer.meta_batch_size) * 4,
        )
        per_step = summarise(scores, self.tasks.higher_is_better)
        before, after = per_step[0], per_step[-1]
        self.last_val = {
            "step": self.step,
            "wall_s": round(time.perf_counter() - self._started, 2),
            # The mean over all tasks, diverged ones included, is what picks best.pt: a checkpoint
            # whose adaptation blows up on some tasks is worse, not better, for a user.
            "value": after.mean,
            "ci95": after.ci95,
            "median": after.median,
            "value_stable": after.mean_stable,
            "diverged_tasks": after.diverged_tasks,
            "before_adaptation": before.mean,
            "eval_steps": self.algorithm.eval_steps,
        }
        return self.last_val

    def _is_better(self, value: float) -> bool:
        """A NaN validation is never best, and any other value beats a NaN one."""
        if math.isnan(value):
            return False
        if self.best is None or math.isnan(self.best["value"]):
            return True
        if self.tasks.higher_is_better:
            return value > self.best["value"]
        return value < self.best["value"]

    # -- the loop ----------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to ``trainer.max_steps``; returns what ``metrics.json`` holds."""
        trainer = self.cfg.trainer
        max_steps = int(trainer.max_steps)
        metric = self.tasks.metric_name
        strategy = self.algorithm.strategy()
        log.info(
            "run dir %s | device %s (%d CPU threads%s) | task batching %s | steps %d -> %d",
            self.run_dir,
            self.device,
            torch.get_num_threads(),
            ", as many as other processes leave idle" if self.thread_governor else "",
            strategy,
            self.step,
            max_steps,
        )
        writer = tensorboard.Writer(self.run_dir / "tb") if self.world.is_main else NullWriter()  # failures: one line
        progress = tqdm(
            total=max_steps,
            initial=self.step,
            desc="meta-train",
            unit="step",
            dynamic_ncols=True,
            disable=(None if trainer.progress is None else not trainer.progress) if self.world.is_main else True,
            mininterval=0.5,
        )
        window = _Window(self.device)
        self._started = started = time.perf_counter()
        params = [p for p in self.algorithm.parameters() if p.requires_grad]
        try:
            with _graceful_stop(self), self.world.signals():
                tick = time.perf_counter()
                budget = 60.0 * trainer.max_minutes if trainer.max_minutes else float("inf")
                while self.step < max_steps:
                    if self.thread_governor is not None:
                        self.thread_governor.maybe_adjust()
                    batch = self.tasks.sample(int(trainer.meta_batch_size), self.task_generator)
                    self.optimizer.zero_grad(set_to_none=True)
                    # Under torchrun each rank adapts its share; the .grad is the same on every rank.
                    out = self.world.meta_backward(self.algorithm, batch, step=self.step)
                    loss = out.loss_after.mean()
                    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                    if not torch.isfinite(loss + grad_norm):
                        self._fail_non_finite(loss, grad_norm)
                    if trainer.grad_clip:
                        torch.nn.utils.clip_grads_with_norm_(params, float(trainer.grad_clip), grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.step += 1
                    window.add(out.loss_before.mean(), loss, grad_norm, batch.num_tasks)
                    progress.update(1)
                    out_of_time = bool(trainer.max_minutes) and self.world.any(time.perf_counter() - started >= budget)
                    final = self.step == max_steps or out_of_time

                    if self.step % int(trainer.log_every) == 0 or final:
                        stats = window.flush()
                        lr = self.optimizer.param_groups[0]["lr"]
                        for name, value in stats.items():
                            writer.add_scalar(f"train/{name}", value, self.step)
                        writer.add_scalar("train/lr", lr, self.step)
                        progress.set_postfix(
                            loss=f"{stats['loss_after']:.4g}",
                            tasks_s=f"{stats['tasks_per_s']:.0f}",
                            refresh=False,
                        )
                    if self.step % int(trainer.val_every) == 0 or final:
                        self._validate_and_log(writer, metric, final=final)
                    if self.step % int(trainer.ckpt_every) == 0 or final:
                        self._save("last.pt")
                    self._stop_signal = self.world.agree_on_signal(self._stop_signal)  # the ranks stop together
                    if self._stop_signal is not None:
                        self._interrupt()
                    tock = time.perf_counter()
                    self.step_seconds.append(tock - tick)
                    tick = tock
                    if out_of_time:
                        log.info("trainer.max_minutes=%s reached at step %d", trainer.max_minutes, self.step)
                        break
            if self.last_val is None or self.last_val["step"] != self.step:
                self._validate_and_log(writer, metric, final=True)  # resumed at max_steps, or nothing ran
            wall = time.perf_counter() - started
            metrics = self._metrics(wall)
            if self.world.is_main:
                write_json(metrics, self.run_dir / "metrics.json")
            self._write_figure(writer, final=True)
            scale, unit = display_scale(metric)
            best = (
                f"best {scale * self.best['value']:.4g}{unit} at step {self.best['step']}"
                if self.best is not None
                else "no validation was a number, so there is no best.pt; use last.pt"
            )
            log.info(
                "done: step %d, val %s %.4g%s (%s), %.1fs",
                self.step,
                metric,
                scale * self.last_val["value"],
                unit,
                best,
                wall,
            )
            return metrics
        finally:
            progress.close()
            writer.close()

    def _validate_and_log(self, writer, metric: str, final: bool = False) -> None:
        val = self.validate()
        self.history.append({k: val[k] for k in ("step", "wall_s", "value", "ci95", "diverged_tasks")})
        scale, unit = display_scale(metric)
        writer.add_scalar(f"val/{metric}", scale * val["value"], self.step)
        writer.add_scalar(f"val/{metric}_before_adaptation", scale * val["before_adaptation"], self.step)
        writer.add_scalar("val/diverged_tasks", val["diverged_tasks"], self.step)
        if self._is_better(val["value"]):
            self.best = dict(val)
            self._save("best.pt")
        self._keep_top_k(val)
        if self.best is not None:
            writer.add_scalar(f"val/best_{metric}", scale * self.best["value"], self.step)
        if not final:  # the final figure is written once, by fit()
            self._write_figure(writer, final=False)
        diverged = val["diverged_tasks"]
        log.info(
            "step %d: val %s %.4g%s +- %.2g after %d steps (%.4g%s before)%s",
            self.step,
            metric,
            scale * val["value"],
            unit,
            scale * val["ci95"],
            val["eval_steps"],
            scale * val["before_adaptation"],
            unit,
            f"; diverged on {diverged} of {self.cfg.trainer.val_tasks} tasks (median {scale * val['median']:.4g}"
            f"{unit}, mean of the rest {scale * val['value_stable']:.4g}{unit})"
            if diverged
            else "",
        )
        if math.isnan(val["value"]):
            log.warning("step %d: validation %s is NaN; it is never kept as best.pt", self.step, metric)

    def _keep_top_k(self, val: dict[str, Any]) -> None:
        """Keep the ``trainer.keep_top_k`` best validated checkpoints in ``checkpoints/top/`` with an
        ``index.json``, for ``maml-eval eval.ensemble_top_k`` (MAML++'s evaluation protocol)."""
        k = int(self.cfg.trainer.keep_top_k)
        if k <= 0 or math.isnan(val["value"]) or any(entry["step"] == val["step"] for entry in self.top):
            return
        sign = -1.0 if self.tasks.higher_is_better else 1.0
        entry = {"step": val["step"], "value": val["value"], "file": f"step_{val['step']:08d}.pt"}
        # Ties go to the earlier step, as for best.pt, so that the first member is always best.pt.
        ranked = sorted([*self.top, entry], key=lambda e: (sign * e["value"], e["step"]))
        kept, dropped = ranked[:k], ranked[k:]
        top_dir = self.ckpt_dir / "top"
        if entry in kept:
            self._save(entry["file"], top_dir / entry["file"], top=kept)
        self.top = kept
        if not self.world.is_main:
            return
        write_json(
            {"metric": self.tasks.metric_name, "higher_is_better": self.tasks.higher_is_better, "checkpoints": kept},
            top_dir / "index.json",
        )
        for old in dropped:
            if old is not entry:
                (top_dir / old["file"]).unlink(missing_ok=True)

    def _write_figure(self, writer, final: bool) -> None:
        if not self.cfg.trainer.figures or not self.world.is_main:
            return
        fig = adaptation_figure(self.tasks, self.algorithm)
        if fig is None:
            return
        if final:
            path = self.run_dir / "figures" / "adaptation.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=110)
            log.info("figure: %s", path)
        writer.add_figure("val/adaptation", fig, self.step, close=True)
        if final:
            from matplotlib import pyplot as plt

            plt.close(fig)

    def _metrics(self, wall: float) -> dict[str, Any]:
        times = sorted(self.step_seconds)
        median_ms = round(1e3 * times[len(times) // 2], 4) if times else None
        return {
            "metric": self.tasks.metric_name,
            "higher_is_better": self.tasks.higher_is_better,
            "steps": self.step,
            "last": self.last_val,
            "best": self.best,
            "history": self.history,
            "wall_time_s": round(wall, 3),
            "task_batching": self.algorithm.strategy(),
            "device": str(self.device),
            # Per step, everything included (sampling, meta-step, optimizer, logging, validation).
            "median_step_ms": median_ms,
            "peak_memory_mb": _peak_memory_mb(self.device),
            **self.world.describe(),
        }

    def _fail_non_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        what = "meta-loss" if not torch.isfinite(loss) else "meta-gradient norm"
        value = loss.item() if not torch.isfinite(loss) else grad_norm.item()
        last = self.ckpt_dir / "last.pt"
        kept = f"last good checkpoint kept: {last}" if last.exists() else "no checkpoint was written yet"
        raise NonFiniteLossError(
            f"{what} is {value} at step {self.step + 1}; stopped before the update ({kept}); "
            "lower optimizer.lr or inner_loop.lr, or set trainer.grad_clip"
        )

    def _interrupt(self) -> None:
        signum = self._stop_signal
        path = self._save("last.pt")
        if self.last_val is not None and self.world.is_main:
            wall = time.perf_counter() - self._started
            write_json(self._metrics(wall) | {"interrupted_at_step": self.step}, self.run_dir / "metrics.json")
        name = signal.Signals(signum).name
        raise TrainingInterrupted(
            f"{name}: stopped at step {self.step} and saved {path}; continue with {resume_command(self.run_dir)}",
            signum,
        )


def _peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on a CUDA device, else the process's peak resident memory."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


class _Window:
    """Running sums of training statistics between two log steps, kept on the device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.sums = torch.zeros(3, device=self.device)
        self.steps = 0
        self.tasks = 0
        self.since = time.perf_counter()

    def add(self, loss_before, loss_after, grad_norm, tasks: int) -> None:
        self.sums += torch.stack([loss_before.detach(), loss_after.detach(), grad_norm.detach()])
        self.steps += 1
        self.tasks += tasks

    def flush(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.since, 1e-9)
        means = (self.sums / max(self.steps, 1)).tolist()
        stats = {
            "loss_before": means[0],
            "loss_after": means[1],
            "grad_norm": means[2],
            "tasks_per_s": self.tasks / elapsed,
        }
        self._reset()
        return stats


@contextmanager
def _graceful_stop(trainer: Trainer):
    """Turn the first SIGINT/SIGTERM into a flag the loop checks after the current step."""

    def handler(signum, frame):
        if trainer._stop_signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        trainer._stop_signal = signum

    # SIGUSR2: submitit's timeout/preemption signal (hydra/launcher=submitit_*). Its handler, put back
    # below, is called after last.pt is saved: it requeues the job (maml_cli/cli/launchers.py).
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
