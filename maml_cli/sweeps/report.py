"""What a finished multirun or Optuna study found: its trials read back from the sweep dir, ranked
by the validation metric, as a table, a CSV, a figure of the metric against each swept parameter,
and the TensorBoard HParams view.

Everything comes from files the runs leave, so a report can be made of any sweep dir, during or
after the sweep, in another process or on another machine:

* each job dir (``DIR/<n>/``): ``.hydra/overrides.yaml`` (what the job was given, swept values
  included) and ``metrics.json`` (the best validation value, its step, the steps run, the wall
  time; written when training ends, so a job that failed has none);
* ``DIR/jobs.jsonl`` (``maml_cli/cli/sweeps.py``): each finished job's error, the only trace of why
  a job without ``metrics.json`` failed; the latest line of a job dir wins (a plain multirun run
  again in the same dir writes over its job dirs);
* ``DIR/multirun.yaml`` (Hydra's basic sweeper) or the jobs' ``.hydra/hydra.yaml``
  (``hydra.sweeper.params``, Optuna's search space): which keys were swept;
* ``DIR/optuna.db``: the state of Optuna's trials, read with the standard library's sqlite3 (no
  optuna import), which tells a trial killed mid-run (still ``RUNNING``) from one not started.

Nothing here imports from ``maml_cli.cli``: the command (``maml_cli/cli/sweep_report.py``) is a
thin layer over this module.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shlex
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from maml_cli.errors import MamlError

RECORDS_FILE = "jobs.jsonl"  # as maml_cli/cli/sweeps.py writes it
HPARAMS_DIR = "tb_hparams"
CSV_FILE = "sweep_report.csv"
FIGURE_FILE = "sweep_report.png"
#: What a failed job reports to the sweeper (maml_cli/cli/sweeps.py WORST_LOSS): never a real value.
WORST_LOSS = 3.4028234663852886e38
#: Overrides that make a command a sweep; the best config's line is one run, so it drops them.
SWEEP_ONLY = ("hydra.sweep.", "hydra.sweeper.", "hydra.launcher.", "hydra/sweeper", "hydra/launcher", "hydra.mode")
#: A job's error that says its numbers stopped being numbers (NonFiniteLossError and the like).
NON_FINITE = re.compile(r"\b(nan|-?inf)\b|non-finite|not finite|diverg", re.IGNORECASE)


@dataclass
class Trial:
    """One job of the sweep. ``status``: ok, diverged, failed, damaged (metrics.json cannot be
    read), interrupted (Ctrl-C/SIGTERM; its metrics are those of the steps it ran) or no result
    (no metrics.json and no error: still running, or killed)."""

    job: str
    overrides: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    value: float | None = None
    best_step: int | None = None
    steps: int | None = None
    wall_s: float | None = None
    status: str = "no result"
    error: str | None = None


@dataclass
class Sweep:
    dir: Path
    metric: str
    higher_is_better: bool
    swept: list[str]
    trials: list[Trial]  # the best first; trials without a value last, in job order

    @property
    def best(self) -> Trial | None:
        return self.trials[0] if self.trials and self.trials[0].value is not None else None

    @property
    def scale(self) -> tuple[float, str]:
        # As engine/evaluation.py display_scale, without importing torch for it.
        return (100.0, "%") if self.metric == "accuracy" else (1.0, "")


# -- reading --------------------------------------------------------------------------------


def _job_sort_key(job: str) -> tuple[int, str]:
    return (int(job), "") if job.isdigit() else (1 << 62, job)


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """The job dirs right under ``sweep_dir`` (Hydra's ``hydra.sweep.subdir``, the job's number)."""
    found = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    return sorted(found, key=lambda p: _job_sort_key(p.name))


def _no_runs(sweep_dir: Path) -> MamlError:
    """The error for a folder without job dirs, saying where the runs are when they are elsewhere."""
    if (sweep_dir / ".hydra/overrides.yaml").is_file():
        return MamlError(
            f"no runs in {sweep_dir}: it is one run's dir (it has .hydra/overrides.yaml), not a sweep's; "
            f"give the sweep dir above it ({sweep_dir.parent})"
        )
    for pattern in ("*/*/.hydra/overrides.yaml", "*/*/*/.hydra/overrides.yaml"):
        deeper = sorted(sweep_dir.glob(pattern))
        if deeper:
            example = deeper[0].parent.parent.parent
            return MamlError(f"no runs in {sweep_dir}: it holds sweeps, not runs; give one sweep dir, e.g. {example}")
    return MamlError(
        f"no runs in {sweep_dir}: no job dir with .hydra/overrides.yaml in it; give a multirun's "
        "hydra.sweep.dir (maml-train -m ... writes multirun/DATE/TIME by default)"
    )


def _records(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """The latest ``jobs.jsonl`` line of each job dir; lines cut short by a killed job are skipped."""
    try:
        lines = (sweep_dir / RECORDS_FILE).read_text().splitlines()
    except OSError:
        return {}
    latest: dict[str, dict[str, Any]] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("job"), str):
            latest[record["job"]] = record
    return latest


def optuna_states(sweep_dir: Path) -> dict[int, str]:
    """Optuna's state of each trial number (COMPLETE, RUNNING, FAIL...) from ``optuna.db``, when
    it holds one study; empty when there is none or it cannot be read (the report does without)."""
    path = sweep_dir / "optuna.db"
    if not path.is_file():
        return {}
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            studies = db.execute("SELECT study_id FROM studies").fetchall()
            if len(studies) != 1:
                return {}
            rows = db.execute("SELECT number, state FROM trials WHERE study_id = ?", studies[0]).fetchall()
    except sqlite3.Error:
        return {}
    return {int(number): str(state) for number, state in rows}


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _value(override: str) -> Any:
    """The typed value of ``key=value`` as Hydra reads it (0.01 a float, 5 an int, adam a string)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        value = OverridesParser.create().parse_overrides([override])[0].value()
    except Exception:
        return override.split("=", 1)[1] if "=" in override else ""
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def _declared_sweep_keys(sweep_dir: Path, job_dirs: list[Path]) -> list[str]:
    """The keys the sweep command declared as swept: the sweep overrides in ``multirun.yaml`` and
    the Optuna search space (``hydra.sweeper.params``) in a job's ``hydra.yaml``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys: list[str] = []
    try:
        task = (yaml.safe_load((sweep_dir / "multirun.yaml").read_text()) or {}).get("hydra", {})["overrides"]["task"]
        for override in OverridesParser.create().parse_overrides([str(o) for o in task]):
            if override.is_sweep_override():
                keys.append(override.get_key_element().lstrip("+~"))
    except Exception:
        pass  # no multirun.yaml (the Optuna sweeper writes none) or not one Hydra wrote
    for job_dir in job_dirs[:1]:
        try:
            hydra_cfg = yaml.safe_load((job_dir / ".hydra/hydra.yaml").read_text())["hydra"]
            keys += [str(k) for k in (hydra_cfg.get("sweeper", {}).get("params") or {})]
        except Exception:
            pass
    return keys


def _read_metrics(trial: Trial, path: Path) -> dict[str, Any] | None:
    """``metrics.json`` into ``trial``; a damaged file makes the trial ``damaged``, not a crash."""
    try:
        metrics = json.loads(path.read_text())
        if not isinstance(metrics, dict):
            raise ValueError(f"it holds a {type(metrics).__name__}, not an object")
        best = metrics.get("best")
        if best is not None and not isinstance(best, dict):
            raise ValueError("its 'best' is not an object")
        trial.steps = None if metrics.get("steps") is None else int(metrics["steps"])
        trial.wall_s = None if metrics.get("wall_time_s") is None else float(metrics["wall_time_s"])
        if best is not None:
            trial.best_step = None if best.get("step") is None else int(best["step"])
            value = best.get("value")
            trial.value = None if value is None else float(value)
    except OSError as exc:
        trial.status, trial.error = "damaged", f"cannot read metrics.json: {exc.strerror or exc}"
        return None
    except (ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        trial.status, trial.error = "damaged", f"metrics.json is damaged: {reason}; rerun the job"
        trial.value = trial.best_step = trial.steps = trial.wall_s = None
        return None
    return metrics


def _trial(job_dir: Path, record: dict[str, Any] | None, optuna_state: str | None) -> tuple[Trial, dict | None]:
    try:
        overrides = [str(o) for o in yaml.safe_load((job_dir / ".hydra/overrides.yaml").read_text()) or []]
    except (OSError, yaml.YAMLError, TypeError):
        overrides = [str(o) for o in (record or {}).get("overrides") or []]
    trial = Trial(job=job_dir.name, overrides=overrides)
    metrics = None
    if (job_dir / "metrics.json").exists():
        metrics = _read_metrics(trial, job_dir / "metrics.json")
    error = (record or {}).get("error")
    if trial.status == "damaged":
        return trial, None
    if error is not None:
        trial.error = str(error)
        trial.status = "diverged" if NON_FINITE.search(trial.error) else "failed"
        trial.value = None  # a failed job's metrics.json, if any, is of an earlier run in this dir
    elif metrics is not None:
        if trial.value is None or not math.isfinite(trial.value) or abs(trial.value) >= WORST_LOSS:
            trial.value = None
            trial.status = "diverged"
            trial.error = "no validation was a finite number"
        elif "interrupted_at_step" in metrics:
            trial.status = "interrupted"
            trial.error = f"stopped at step {metrics['interrupted_at_step']} (Ctrl-C or SIGTERM)"
        else:
            trial.status = "ok"
    elif optuna_state not in (None, "COMPLETE"):
        trial.error = f"no metrics.json and no error; Optuna's trial state is {optuna_state} (killed, or still running)"
    else:
        trial.error = "no metrics.json and no error (killed, or still running)"
    return trial, metrics


def read_sweep(sweep_dir: str | Path) -> Sweep:
    """The trials of ``sweep_dir``, the best first. Raises :class:`MamlError` when it is not a
    folder or holds no job dirs."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        what = "is a file, not a folder" if sweep_dir.exists() else "does not exist"
        raise MamlError(f"{sweep_dir} {what}; give a multirun's sweep dir (hydra.sweep.dir)")
    job_dirs = _job_dirs(sweep_dir)
    if not job_dirs:
        raise _no_runs(sweep_dir)
    records, states = _records(sweep_dir), optuna_states(sweep_dir)
    trials, metric, higher = [], None, None
    for job_dir in job_dirs:
        state = states.get(int(job_dir.name)) if job_dir.name.isdigit() else None
        trial, metrics = _trial(job_dir, records.get(job_dir.name), state)
        trials.append(trial)
        if metrics is not None and metric is None and isinstance(metrics.get("metric"), str):
            metric, higher = metrics["metric"], bool(metrics.get("higher_is_better"))
    swept = _swept_keys(sweep_dir, job_dirs, trials)
    for trial in trials:
        by_key = {_key(o): o for o in trial.overrides}
        trial.params = {k: _value(by_key[k]) for k in swept if k in by_key}
    higher = bool(higher)
    ranked = sorted(
        (t for t in trials if t.value is not None),
        key=lambda t: (-t.value if higher else t.value, _job_sort_key(t.job)),
    )
    rest = [t for t in trials if t.value is None]
    return Sweep(sweep_dir, metric or "value", higher, swept, ranked + rest)


def _swept_keys(sweep_dir: Path, job_dirs: list[Path], trials: list[Trial]) -> list[str]:
    """The declared sweep keys and any key whose value differs between jobs, in override order."""
    declared = set(_declared_sweep_keys(sweep_dir, job_dirs))
    values: dict[str, set[str]] = {}
    order: list[str] = []
    for trial in trials:
        for override in trial.overrides:
            key = _key(override)
            if key not in values:
                values[key] = set()
                order.append(key)
            values[key].add(override.split("=", 1)[-1])
    varying = {
        k for k, v in values.items() if len(v) > 1 or sum(k in map(_key, t.overrides) for t in trials) < len(trials)
    }
    return [k for k in order if (k in declared or k in varying) and not k.startswith(SWEEP_ONLY)]


# -- what the report shows ------------------------------------------------------------------


def override_line(sweep: Sweep, trial: Trial) -> str:
    """The ``maml-train`` command that runs ``trial``'s config once: its overrides, less those that
    make a sweep; a search preset (``hparams_search=...``) stays for the settings it makes, with
    ``hydra.mode=RUN`` so that it runs once instead of searching."""
    kept = [o for o in trial.overrides if not _key(o).startswith(SWEEP_ONLY)]
    if any(_key(o) == "hparams_search" for o in kept):
        kept.append("hydra.mode=RUN")
    return " ".join(["maml-train", *(shlex.quote(o) for o in kept)])


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(sweep: Sweep, top: int | None = None) -> str:
    """An aligned text table of the trials, the best first (the metric shown as everywhere else:
    accuracy in percent), then one line per trial that did not end well."""
    scale, unit = sweep.scale
    arrow = "higher is better" if sweep.higher_is_better else "lower is better"
    header = ["rank", "job", *sweep.swept, f"best {sweep.metric}{' (%)' if unit else ''}", "at step", "steps", "wall s"]
    header.append("status")
    rows = []
    shown = sweep.trials if top is None else sweep.trials[:top]
    for rank, t in enumerate(shown, 1):
        rows.append(
            [
                str(rank) if t.value is not None else "-",
                t.job,
                *(_show(t.params[k]) if k in t.params else "-" for k in sweep.swept),
                "-" if t.value is None else f"{scale * t.value:.4g}",
                "-" if t.best_step is None else str(t.best_step),
                "-" if t.steps is None else str(t.steps),
                "-" if t.wall_s is None else f"{t.wall_s:.1f}",
                t.status,
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = {0, len(header) - 5, len(header) - 4, len(header) - 3, len(header) - 2}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    ok = sum(t.status == "ok" for t in sweep.trials)
    out = [f"{len(sweep.trials)} runs in {sweep.dir} ({ok} ok), by {sweep.metric} ({arrow}):", line(header)]
    out += [line(r) for r in rows]
    if top is not None and len(sweep.trials) > top:
        out.append(f"... {len(sweep.trials) - top} more in {sweep.dir / CSV_FILE}")
    out += [f"job {t.job} {t.status}: {t.error}" for t in sweep.trials if t.error]
    return "\n".join(out)


def write_csv(sweep: Sweep, path: Path) -> None:
    """Every trial, one row each, with the raw metric (a fraction for accuracy, as in metrics.json)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["rank", "job", *sweep.swept, f"best_{sweep.metric}", "best_step", "steps", "wall_time_s"]
            + ["status", "error"]
        )
        for rank, t in enumerate(sweep.trials, 1):
            writer.writerow(
                [
                    rank if t.value is not None else "",
                    t.job,
                    *(t.params.get(k, "") for k in sweep.swept),
                    "" if t.value is None else repr(t.value),
                    "" if t.best_step is None else t.best_step,
                    "" if t.steps is None else t.steps,
                    "" if t.wall_s is None else t.wall_s,
                    t.status,
                    t.error or "",
                ]
            )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def write_figure(sweep: Sweep, path: Path) -> int:
    """One panel per swept parameter: the best metric of each trial against its value (a log axis
    where positive values span two decades or more, categories for anything not a number); trials
    without a value are red crosses at the panel's worst edge. Returns the number of panels."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    scale, unit = sweep.scale
    keys = sweep.swept or ["job"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.0 * len(keys), 3.4), squeeze=False, sharey=True)
    values = [scale * t.value for t in sweep.trials if t.value is not None]
    for ax, key in zip(axes[0], keys):
        params = [t.job if key == "job" else t.params.get(key) for t in sweep.trials]
        numeric = all(_is_number(p) for p in params if p is not None)
        if numeric:
            xs: list[Any] = params
            positive = [p for p in params if p is not None and p > 0]
            if (
                positive
                and len(positive) == sum(p is not None for p in params)
                and max(positive) >= 100 * min(positive)
            ):
                ax.set_xscale("log")
        else:
            categories = sorted({str(p) for p in params}, key=lambda c: (c == "None", c))
            xs = [categories.index(str(p)) for p in params]
            ax.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 4 else 0)
        good = [(x, scale * t.value) for x, t in zip(xs, sweep.trials) if t.value is not None and x is not None]
        bad = [x for x, t in zip(xs, sweep.trials) if t.value is None and x is not None]
        if good:
            ax.scatter(*zip(*good), color="tab:blue", zorder=3, label="trial")
        if sweep.best is not None and xs[0] is not None:
            ax.scatter(
                [xs[0]],
                [scale * sweep.best.value],
                s=140,
                facecolors="none",
                edgecolors="tab:green",
                zorder=4,
                label="best",
            )
        if bad:  # at the worst edge of the panel: the top for a loss, the foot for an accuracy
            edge = blended_transform_factory(ax.transData, ax.transAxes)
            y = 0.03 if sweep.higher_is_better else 0.97
            ax.scatter(
                bad, [y] * len(bad), marker="x", color="tab:red", transform=edge, zorder=3, label="failed / diverged"
            )
            ax.update_datalim([(x, values[0] if values else 0.0) for x in bad], updatey=False)
            ax.autoscale_view()
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    if values and sweep.metric != "accuracy" and min(values) > 0 and max(values) >= 100 * min(values):
        axes[0][0].set_yscale("log")
    axes[0][0].set_ylabel(f"best val {sweep.metric}{' (%)' if unit else ''}")
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle(f"{sweep.dir}: {len(sweep.trials)} runs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Description": f"maml-sweep-report panels: {', '.join(keys)}"})
    plt.close(fig)
    return len(keys)


def _hparam(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def write_hparams(sweep: Sweep, logdir: Path) -> None:
    """TensorBoard's HParams view of the sweep: the experiment (swept parameters, metrics) in
    ``logdir`` itself, and one run per trial, ``logdir/<job>``, with its parameters, its best
    metric, steps and wall time, and whether it ended well. ``tensorboard --logdir SWEEP_DIR``
    shows it beside the jobs' own curves. Replaces what an earlier report wrote there."""
    import shutil

    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    if logdir.exists():
        shutil.rmtree(logdir)
    metric_tag = f"sweep/best_{sweep.metric}"
    metric_tags = [metric_tag, "sweep/steps", "sweep/wall_time_s"]
    # A parameter takes one type in TensorBoard: strings when any trial's value is not a number.
    as_text = {k for k in sweep.swept if not all(_is_number(t.params[k]) for t in sweep.trials if k in t.params)}
    domains = {k: sorted({str(t.params[k]) for t in sweep.trials if k in t.params}) for k in as_text}

    def params_of(trial: Trial) -> dict[str, Any]:
        return {k: (str(v) if k in as_text else _hparam(v)) for k, v in trial.params.items()}

    example = next((t for t in sweep.trials if len(t.params) == len(sweep.swept)), sweep.trials[0])
    experiment, _, _ = hparams(params_of(example), dict.fromkeys(metric_tags, 0.0), domains)
    with SummaryWriter(log_dir=str(logdir)) as writer:
        writer.file_writer.add_summary(experiment)
    scale, _ = sweep.scale
    for trial in sweep.trials:
        _, start, end = hparams(params_of(trial), dict.fromkeys(metric_tags, 0.0))
        if trial.status != "ok":
            status = "STATUS_FAILURE" if trial.status in ("failed", "diverged", "damaged") else "STATUS_UNKNOWN"
            content = HParamsPluginData(session_end_info=SessionEndInfo(status=status), version=0)
            end.value[0].metadata.plugin_data.content = content.SerializeToString()
        with SummaryWriter(log_dir=str(logdir / trial.job)) as writer:
            writer.file_writer.add_summary(start)
            if trial.value is not None:
                writer.add_scalar(metric_tag, scale * trial.value, trial.best_step or 0)
            if trial.steps is not None:
                writer.add_scalar("sweep/steps", trial.steps, trial.steps)
            if trial.wall_s is not None:
                writer.add_scalar("sweep/wall_time_s", trial.wall_s, trial.steps or 0)
            writer.file_writer.add_summary(end)
