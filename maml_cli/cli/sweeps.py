"""Multiruns that outlive a failing job, and what an Optuna search needs from ``maml-train``.

A sweep over learning rates is expected to have jobs that diverge, but Hydra ends a whole
multirun at the first job that raises: its basic sweeper re-raises a failed job's exception once
the batch is done, and hydra-optuna-sweeper re-raises a failed trial (and crashes on a NaN
objective, with a double traceback: upstream issue facebookresearch/hydra#2237). So, in a
multirun that :class:`SweepReport` watches, a job's :class:`MamlError` is reported (one
``error:`` line on stderr and in its ``train.log``) and recorded, the job returns the worst
objective for its metric, and the other jobs go on. At the end, :class:`SweepReport` fails the
multirun with a one-line summary, which ``run_cli`` prints before exiting 1.

Everything a job tells the main process goes through files in the sweep dir, not memory: with
the joblib launcher, jobs run in other processes.

* ``.maml_multirun.json`` (written at the start of each multirun): the multirun's id and the
  number of job dirs that earlier Optuna multiruns left in this sweep dir.
* ``jobs.jsonl``: one line per finished job: the multirun's id, its dir, its overrides, its
  objective, its error (``null`` when it succeeded) and when it ended. Lines from earlier
  multiruns stay.

An Optuna study stored in the sweep dir resumes when the same command is run again with the
same ``hydra.sweep.dir``; hydra-optuna-sweeper numbers the jobs of every invocation from 0, so
``hydra.sweep.subdir`` adds the number of job dirs already there (:func:`job_subdir`), and the
sampler's seed moves on by as much (:func:`resume_seed`) so the resumed study draws new points.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import math
import os
import re
import time
import typing
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from maml_cli.cli.common import ReportedError
from maml_cli.errors import ConfigError, MamlError, TrainingInterrupted

log = logging.getLogger("maml_cli")

#: What a failed or diverged job returns when its metric is minimised: float32's largest value,
#: finite everywhere the objective goes (SQLite, JSON, TensorBoard) and worse than any real loss.
WORST_LOSS = 3.4028234663852886e38
#: ...and when its metric is an accuracy (maximised): nothing scores below 0.
WORST_ACCURACY = 0.0

STATE_FILE = ".maml_multirun.json"
RECORDS_FILE = "jobs.jsonl"
INSTALL_HINT = "pip install 'maml-cli[sweep]'"
#: Hydra plugins the ``[sweep]`` extra installs: ``hydra/<group>=<option>`` -> (what it is, its module).
PLUGINS = {
    ("sweeper", "optuna"): (
        "the Optuna sweeper (hydra-optuna-sweeper; every hparams_search preset uses it)",
        "hydra_plugins.hydra_optuna_sweeper",
    ),
    ("launcher", "joblib"): ("the joblib launcher (hydra-joblib-launcher)", "hydra_plugins.hydra_joblib_launcher"),
    # configs/hydra/launcher/ has these two, so Hydra finds them without the plugin: the check is
    # at the start of the multirun (check_launcher), before anything is written.
    ("launcher", "submitit_local"): (
        "the submitit launcher (hydra-submitit-launcher)",
        "hydra_plugins.hydra_submitit_launcher",
    ),
    ("launcher", "submitit_slurm"): (
        "the submitit launcher (hydra-submitit-launcher)",
        "hydra_plugins.hydra_submitit_launcher",
    ),
}


# -- the metric's direction ------------------------------------------------------------------


def _locate(path: str) -> Any:
    """The object a dotted path names, as ``_target_`` means it (quietly: Hydra's ``get_object``
    logs every failure on the console)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            found = getattr(found, attr)
        return found
    raise ImportError(path)


def _task_class(target: str) -> type:
    """The task distribution ``dataset._target_`` builds: the class itself, or what a builder
    function is annotated to return (e.g. ``omniglot_tasks -> FewShotImageTasks``)."""
    try:
        built = _locate(target)
    except (ImportError, AttributeError):
        raise ConfigError(f"cannot import dataset._target_={target} (is its module on the Python path?)") from None
    if isinstance(built, type):
        return built
    returned = typing.get_type_hints(built).get("return") if callable(built) else None
    if isinstance(returned, type):
        return returned
    raise ConfigError(
        f"cannot tell from dataset._target_={target} which task distribution it builds (no return annotation); "
        "set hydra.sweeper.direction=maximize or minimize"
    )


def higher_is_better(target: str) -> bool:
    tasks = _task_class(target)
    if not isinstance(getattr(tasks, "higher_is_better", None), bool):
        raise ConfigError(
            f"{tasks.__name__} (dataset._target_={target}) has no higher_is_better class attribute; "
            "set hydra.sweeper.direction=maximize or minimize"
        )
    return tasks.higher_is_better


def direction(target: str) -> str:
    """``maximize`` or ``minimize``: what Optuna must do with the validation metric of ``target``'s tasks.

    Used as ``hydra.sweeper.direction: ${maml_direction:${dataset._target_}}``, so a search preset
    follows whatever dataset the command line picks.
    """
    return "maximize" if higher_is_better(target) else "minimize"


def worst_objective(cfg: DictConfig) -> float:
    """What a failed job returns: worse than anything a real run of ``cfg`` can score.

    When the task distribution cannot be told (the job failed because ``dataset._target_`` is
    wrong), the sweeper's own direction decides.
    """
    target = str(OmegaConf.select(cfg, "dataset._target_"))
    try:
        maximised = higher_is_better(target)
    except MamlError:
        try:
            maximised = "max" in str(OmegaConf.select(HydraConfig.get(), "sweeper.direction", default=""))
        except Exception:
            maximised = False
        return -WORST_LOSS if maximised else WORST_LOSS
    if not maximised:
        return WORST_LOSS
    return WORST_ACCURACY if getattr(_task_class(target), "metric_name", None) == "accuracy" else -WORST_LOSS


def finite_objective(value: float | None, cfg: DictConfig) -> float:
    """``value``, or the worst objective when it is NaN, infinite (every validation diverged) or
    None (nothing validated): Optuna cannot store a NaN trial (the sweeper crashes), and inf
    breaks its samplers."""
    if value is None or not math.isfinite(float(value)):
        log.warning("the objective is %s; the sweeper gets the worst value for the metric instead", value)
        return worst_objective(cfg)
    return float(value)


# -- the multirun's state, shared with its jobs through the sweep dir ------------------------


def _read_state(sweep_dir: str | os.PathLike) -> dict[str, Any]:
    try:
        return json.loads((Path(sweep_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _earlier_job_dirs(sweep_dir: Path) -> int:
    """1 + the highest numbered job dir in ``sweep_dir`` (0 when there is none)."""
    numbers = [int(p.name) for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(numbers) + 1 if numbers else 0


def job_subdir(sweep_dir: str, num: int) -> str:
    """``hydra.sweep.subdir``: the job's number, after the job dirs of earlier Optuna multiruns."""
    return str(int(num) + int(_read_state(sweep_dir).get("job_offset", 0)))


def resume_seed(seed: int | None, sweep_dir: str) -> int | None:
    """The Optuna sampler's seed: ``seed`` for a new study, moved on by the trials already run
    for a resumed one (the same seed would draw the same points as the first trials again)."""
    if seed is None:
        return None
    return int(seed) + int(_read_state(sweep_dir).get("job_offset", 0))


def register_resolvers() -> None:
    """The ``${maml_...}`` resolvers the configs use. Called at import, because joblib's worker
    processes resolve ``hydra.sweep.subdir`` too; they import this module to unpickle the callback."""
    OmegaConf.register_new_resolver("maml_direction", direction, replace=True)
    OmegaConf.register_new_resolver("maml_job_subdir", job_subdir, replace=True)
    OmegaConf.register_new_resolver("maml_resume_seed", resume_seed, replace=True)


register_resolvers()


# -- in a job --------------------------------------------------------------------------------


def _is_watched_multirun() -> bool:
    """Whether this job belongs to a multirun that :class:`SweepReport` summarises at its end:
    only then may a job's error be turned into a value (otherwise it would go unnoticed)."""
    if not HydraConfig.initialized():
        return False
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return False
    callbacks = hydra_cfg.get("callbacks") or {}
    target = f"{SweepReport.__module__}.{SweepReport.__qualname__}"
    return any(str(c.get("_target_", "")) == target for c in callbacks.values())


def survives(error: MamlError) -> bool:
    """Whether the multirun goes on after ``error``: not after Ctrl-C/SIGTERM, which stop it all."""
    return not isinstance(error, TrainingInterrupted) and _is_watched_multirun()


def record_job(value: float | None = None, error: MamlError | None = None) -> None:
    """Append this job's outcome to the sweep dir's ``jobs.jsonl`` (one write, so that jobs in
    parallel processes never interleave their lines)."""
    if not _is_watched_multirun():
        return
    hydra_cfg = HydraConfig.get()
    sweep_dir = Path(str(hydra_cfg.sweep.dir))
    run_dir = Path(str(hydra_cfg.runtime.output_dir))
    line = {
        "multirun": _read_state(sweep_dir).get("id"),
        "job": os.path.relpath(run_dir, sweep_dir.resolve()),
        "overrides": list(hydra_cfg.overrides.task),
        "objective": value,
        "error": None if error is None else str(error),
        "time": time.time(),
    }
    data = (json.dumps(line) + "\n").encode()
    fd = os.open(sweep_dir / RECORDS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# -- in the main process ---------------------------------------------------------------------


def _is_optuna(cfg: DictConfig) -> bool:
    return "optuna" in str(OmegaConf.select(cfg, "hydra.sweeper._target_", default=""))


def _search_space_keys(cfg: DictConfig) -> list[tuple[str, str]]:
    """``(key, where it is set)`` for every key the Optuna sweeper will draw a value for."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [(str(k), "hydra.sweeper.params") for k in OmegaConf.select(cfg, "hydra.sweeper.params") or {}]
    overrides = [str(o) for o in OmegaConf.select(cfg, "hydra.overrides.task", default=[]) or []]
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override() and not (override.is_add() or override.is_force_add() or override.is_delete()):
            keys.append((override.get_key_element(), "the command line"))
    return keys


def _check_search_space(cfg: DictConfig) -> None:
    """Every key the search draws names a config key or group, before the study opens (otherwise
    the first trial dies composing its config, and the study keeps a trial that never ends)."""
    choices = OmegaConf.select(cfg, "hydra.runtime.choices") or {}
    missing = object()
    for raw, where in _search_space_keys(cfg):
        if raw.startswith(("+", "~")):
            continue  # adds or deletes a key: nothing to look for
        key = raw.split("@", 1)[0]
        if key in choices or OmegaConf.select(cfg, key, default=missing) is not missing:
            continue
        parent, _, leaf = key.rpartition(".")
        siblings = OmegaConf.select(cfg, parent, default=None) if parent else cfg
        known = [str(k) for k in siblings.keys()] if isinstance(siblings, DictConfig) else []
        close = difflib.get_close_matches(leaf, known, n=1)
        hint = f" (did you mean '{parent + '.' if parent else ''}{close[0]}'?)" if close else ""
        raise ConfigError(
            f"the Optuna search space ({where}) names '{key}', which is not a config key{hint}; "
            "see the keys with --cfg job"
        )


def _check_storage(cfg: DictConfig) -> None:
    """optuna 2.x (all hydra-optuna-sweeper allows) fails on SQLAlchemy 2 with a bare AssertionError."""
    storage = OmegaConf.select(cfg, "hydra.sweeper.storage")
    if not storage or not str(storage).split(":", 1)[0].startswith(("sqlite", "mysql", "postgresql")):
        return
    import optuna
    import sqlalchemy

    if int(optuna.__version__.split(".")[0]) < 3 and int(sqlalchemy.__version__.split(".")[0]) >= 2:
        raise ConfigError(
            f"optuna {optuna.__version__} cannot open hydra.sweeper.storage={storage} with SQLAlchemy "
            f"{sqlalchemy.__version__}; install SQLAlchemy 1.4 with {INSTALL_HINT} (it pins sqlalchemy<2)"
        )


def _check_direction(cfg: DictConfig) -> None:
    try:
        OmegaConf.select(cfg, "hydra.sweeper.direction")
    except Exception as exc:  # the resolver's ConfigError, wrapped by OmegaConf
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, MamlError):
            cause = cause.__cause__ or cause.__context__
        reason = str(cause) if cause is not None else str(exc).strip().splitlines()[0]
        raise ConfigError(f"hydra.sweeper.direction: {reason}") from None


def _fixed_keys(config: DictConfig) -> set[str]:
    """The keys the command line sets to one value for every job (e.g. ``trainer.max_steps=3``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=[]) or []]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return set()
    return {o.get_key_element().lstrip("+~") for o in parsed if not o.is_sweep_override()}


def _summary(records: list[dict[str, Any]], fixed: set[str], sweep_dir: str) -> str | None:
    """One line: which jobs failed, each with the overrides that set it apart, and its error."""
    failed = [r for r in records if r.get("error") is not None]
    if not failed:
        return None
    jobs = []
    for r in failed:
        own = " ".join(o for o in r.get("overrides", []) if o.split("=", 1)[0].lstrip("+~") not in fixed)
        jobs.append(f"job {r['job']} ({own or 'no overrides of its own'}): {r['error']}")
    return f"{len(failed)} of {len(records)} jobs failed in {sweep_dir}: " + " | ".join(jobs)


class SweepReport(Callback):
    """Registered under ``hydra.callbacks`` in ``configs/train.yaml``.

    At the start of a multirun: checks what an Optuna search needs (an existing sweep dir for its
    SQLite file, known search-space keys, a direction, a working SQLAlchemy) and writes the state its
    jobs read. At the end: raises the one-line summary of the jobs that failed, if any.

    Hydra turns an ``Exception`` raised by a callback into a warning, so the errors leave as
    ``ReportedError`` (a ``BaseException``) for ``run_cli`` to print.
    """

    def __init__(self) -> None:
        self.multirun_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        optuna = _is_optuna(config)
        try:
            check_launcher(config)
            if optuna:
                _check_search_space(config)
                _check_direction(config)
                _check_storage(config)
            sweep_dir = Path(str(config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)  # Optuna opens its SQLite file in it
            offset = _earlier_job_dirs(sweep_dir) if optuna else 0
        except MamlError as exc:
            raise ReportedError(exc) from exc
        except OSError as exc:
            raise ReportedError(MamlError(f"cannot create the sweep dir {exc.filename}: {exc.strerror}")) from exc
        self.multirun_id = f"{time.time():.6f}-{os.getpid()}"
        state = {"id": self.multirun_id, "job_offset": offset}
        (sweep_dir / STATE_FILE).write_text(json.dumps(state) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = str(config.hydra.sweep.dir)
        records = []
        try:
            lines = (Path(sweep_dir) / RECORDS_FILE).read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a job that was killed while writing it
            if record.get("multirun") == self.multirun_id:
                records.append(record)
        summary = _summary(records, _fixed_keys(config), sweep_dir)
        if summary:
            raise ReportedError(MamlError(summary))


# -- the [sweep] extra -------------------------------------------------------------------------


def _not_installed(group: str, option: str) -> str | None:
    """The one-line error for ``hydra/<group>=<option>`` when its plugin is not installed, else ``None``."""
    if (group, option) not in PLUGINS:
        return None
    what, module = PLUGINS[(group, option)]
    try:
        installed = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        installed = False
    if installed:
        return None
    return f"hydra/{group}={option} needs {what}, which is not installed: {INSTALL_HINT}"


def missing_plugin(message: str) -> str | None:
    """For Hydra's "Could not find 'hydra/sweeper/optuna'" when the plugin is not installed: a
    one-line error that says how to install it; ``None`` for any other message."""
    match = re.search(r"Could not find 'hydra/(sweeper|launcher)/(\w+)'", message)
    return _not_installed(match[1], match[2]) if match else None


def check_launcher(config: DictConfig) -> None:
    """The launcher configs that ship in ``configs/hydra/launcher/`` compose without their plugin,
    which only Hydra's plugin lookup would miss (with an "Unknown plugin class" traceback)."""
    choice = OmegaConf.select(config, "hydra.runtime.choices", default=None) or {}
    error = _not_installed("launcher", str(choice.get("hydra/launcher", "")))
    if error:
        raise ConfigError(error)
