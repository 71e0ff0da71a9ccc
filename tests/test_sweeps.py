"""Multiruns and Optuna searches end to end: a failing job never ends the sweep, the summary line
and exit code say which failed, studies resume, the direction follows the metric, and a missing
``[sweep]`` extra or a wrong search-space key is one line."""

from __future__ import annotations

import hashlib
import math
import os
import textwrap
import warnings
from pathlib import Path

import hydra_plugins
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from maml_cli.cli import sweeps
from maml_cli.config import config_dir, register_configs
from maml_cli.engine.checkpoint import load_checkpoint

from .helpers import SWEEP_JOB, run_cli

with warnings.catch_warnings():
    # optuna 2.x (all hydra-optuna-sweeper allows) warns that SQLAlchemy 2 would break it; the [sweep] extra pins <2.
    warnings.simplefilter("ignore")
    import optuna

#: How a search preset is picked. train.yaml's defaults list has no `hparams_search: null` entry,
#: so the group is appended with `+`; with that entry it would be `hparams_search=NAME`.
SEARCH = "hparams_search"
#: An SGD meta-step of 1e10 turns the meta-loss into NaN at step 2, after step 1's checkpoint.
DIVERGES = "1e10"


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    assert "Error executing job" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def digest(run_dir: Path) -> dict[str, str]:
    """Every file of a run dir and a hash of its content."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def overrides_of(run_dir: Path) -> list[str]:
    return yaml.safe_load((run_dir / ".hydra/overrides.yaml").read_text())


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_diverging_job_fails_the_multirun_at_its_end_not_at_once(tmp_path, launcher):
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    proc = run_cli(
        "maml-train",
        "-m",
        "optimizer=sgd",
        f"optimizer.lr={DIVERGES},0.001",
        "trainer.meta_batch_size=2",
        *SWEEP_JOB,
        *extra,
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = error_lines(proc.stderr)
    job_error, summary = errors
    assert proc.stderr.strip().splitlines()[-1] == summary
    assert job_error.startswith("error: meta-loss is nan at step 2"), job_error
    assert summary == f"error: 1 of 2 jobs failed in sweep: job 0 (optimizer.lr=10000000000.0): {job_error[7:]}"

    failed, good = tmp_path / "sweep/0", tmp_path / "sweep/1"
    assert job_error in (failed / "train.log").read_text()
    assert load_checkpoint(failed / "checkpoints/last.pt")["step"] == 1  # the last good one
    assert not (failed / "metrics.json").exists()
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(good / "checkpoints" / name)["config"]["optimizer"]["lr"] == 0.001
    assert yaml.safe_load((good / "metrics.json").read_text())["steps"] == 3


def optuna_search(tmp_path: Path) -> list[str]:
    """Three trials of the sinusoid preset, where inner_loop.lr is 0.01 or 1e6 (which diverges at
    once). Seed 11 makes the TPE sampler's first three draws 0.01, 0.01, 1e6, and, resumed with
    seed 11 + 3, 1e6, 0.01, 0.01: exactly one failure each time (checked, not assumed, below)."""
    return [
        "-m",
        f"{SEARCH}=sinusoid_optuna",
        "seed=11",
        "inner_loop.lr=choice(0.01,1e6)",
        "hydra.sweeper.n_trials=3",
        *SWEEP_JOB,
        "hydra.sweep.dir=study",
    ]


def check_search(proc, study_dir: Path, trials: range) -> list[optuna.trial.FrozenTrial]:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = error_lines(proc.stderr)[-1]
    assert proc.stderr.strip().splitlines()[-1] == summary

    study = optuna.load_study(study_name="sinusoid_optuna", storage=f"sqlite:///{study_dir}/optuna.db")
    assert [t.number for t in study.trials] == list(range(trials.stop))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert math.isfinite(study.best_value) and study.best_value < 10  # an MSE, never the stand-in
    new = [study.trials[n] for n in trials]
    diverged = [t for t in new if t.params["inner_loop.lr"] == 1e6]
    assert len(diverged) == 1, [t.params for t in new]  # what the seed promises
    bad = diverged[0]
    assert bad.value == sweeps.WORST_LOSS  # finite: Optuna stored it as a complete trial

    assert summary.startswith(f"error: 1 of 3 jobs failed in study: job {bad.number} (inner_loop.lr=1000000.0 ")
    assert "meta-loss is" in summary and "at step 1" in summary
    for trial in new:  # trial N ran in study/N, with the values Optuna drew for it
        assert f"inner_loop.lr={trial.params['inner_loop.lr']}" in overrides_of(study_dir / str(trial.number))
        ran = (study_dir / str(trial.number) / "checkpoints/best.pt").exists()
        assert ran == (trial is not bad)
    return new


def test_optuna_search_survives_a_diverging_trial_and_resumes(tmp_path):
    study_dir = tmp_path / "study"
    first = run_cli("maml-train", *optuna_search(tmp_path), cwd=tmp_path)
    first_trials = check_search(first, study_dir, range(3))
    assert "A new study created" in first.stderr
    before = {n: digest(study_dir / str(n)) for n in range(3)}

    again = run_cli("maml-train", *optuna_search(tmp_path), cwd=tmp_path)
    resumed = check_search(again, study_dir, range(3, 6))
    assert "Using an existing study with name 'sinusoid_optuna'" in again.stderr
    assert {n: digest(study_dir / str(n)) for n in range(3)} == before  # earlier trials untouched
    drawn = [t.params for t in first_trials]
    assert all(t.params not in drawn for t in resumed)  # the sampler moved on: no trial repeated


def compose_hydra(*overrides: str):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize(
    ("overrides", "direction"),
    [
        ((f"{SEARCH}=sinusoid_optuna",), "minimize"),  # MSE
        ((f"{SEARCH}=omniglot_optuna",), "maximize"),  # accuracy
        ((f"{SEARCH}=sinusoid_optuna", "experiment=omniglot_5w1s"), "maximize"),  # follows the dataset
    ],
)
def test_the_direction_follows_the_metric(overrides, direction):
    cfg = compose_hydra(*overrides)
    assert OmegaConf.select(cfg, "hydra.sweeper.direction") == direction
    assert OmegaConf.select(cfg, "hydra.sweeper.storage") == f"sqlite:///{cfg.hydra.sweep.dir}/optuna.db"


def test_the_omniglot_search_is_the_omniglot_experiment():
    cfg = compose_hydra(f"{SEARCH}=omniglot_optuna")
    assert cfg.hydra.runtime.choices["experiment"] == "omniglot_5w1s"
    assert (cfg.dataset.ways, cfg.dataset.shots, cfg.model.hidden) == (5, 1, 64)
    assert set(cfg.hydra.sweeper.params) == {
        "inner_loop.lr",
        "optimizer.lr",
        "inner_loop.steps",
        "trainer.meta_batch_size",
    }


def test_the_worst_objective_is_finite_and_worst():
    sinusoid = compose_hydra()
    omniglot = compose_hydra("experiment=omniglot_5w1s")
    assert sweeps.worst_objective(sinusoid) == sweeps.WORST_LOSS == 3.4028234663852886e38
    assert sweeps.worst_objective(omniglot) == 0.0
    assert sweeps.finite_objective(float("inf"), sinusoid) == sweeps.WORST_LOSS
    assert sweeps.finite_objective(float("nan"), omniglot) == 0.0
    assert sweeps.finite_objective(None, sinusoid) == sweeps.WORST_LOSS
    assert sweeps.finite_objective(0.25, sinusoid) == 0.25


def hide_plugin(tmp_path: Path, plugin: str) -> dict[str, str]:
    """An environment in which ``plugin`` is not installed: Hydra finds its plugins in the
    ``hydra_plugins`` namespace package, so a sitecustomize narrows that package's path to a
    folder that links every installed plugin but this one."""
    shadow = tmp_path / "hydra_plugins_without" / plugin
    shadow.mkdir(parents=True)
    for folder in dict.fromkeys(hydra_plugins.__path__):  # a source checkout's may be there twice
        for entry in Path(folder).iterdir():
            if entry.name != plugin and not entry.name.startswith("__"):
                (shadow / entry.name).symlink_to(entry)
    site = tmp_path / f"site_without_{plugin}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import hydra_plugins\nhydra_plugins.__path__ = [{str(shadow)!r}]\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


@pytest.mark.parametrize(
    ("plugin", "args", "named"),
    [
        ("hydra_optuna_sweeper", [f"{SEARCH}=sinusoid_optuna"], "the Optuna sweeper (hydra-optuna-sweeper"),
        ("hydra_optuna_sweeper", ["hydra/sweeper=optuna", "inner_loop.lr=0.01,0.02"], "hydra-optuna-sweeper"),
        ("hydra_joblib_launcher", ["hydra/launcher=joblib", "inner_loop.lr=0.01,0.02"], "hydra-joblib-launcher"),
    ],
)
def test_a_missing_plugin_names_the_extra(tmp_path, plugin, args, named):
    env = hide_plugin(tmp_path, plugin)
    probe = run_cli("python", "-c", f"import hydra_plugins.{plugin}", cwd=tmp_path, env=env)
    assert f"No module named 'hydra_plugins.{plugin}'" in probe.stderr  # the plugin is really gone

    proc = run_cli("maml-train", "-m", *args, *SWEEP_JOB, "hydra.sweep.dir=sweep", cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = error_lines(proc.stderr)
    assert named in line and line.endswith("which is not installed: pip install 'maml-cli[sweep]'"), line
    assert not (tmp_path / "sweep").exists()


def test_a_search_space_key_that_does_not_exist_is_one_line(tmp_path):
    conf = tmp_path / "conf/hparams_search"
    conf.mkdir(parents=True)
    (conf / "typo.yaml").write_text(
        textwrap.dedent(
            """\
            # @package _global_
            defaults:
              - sinusoid_optuna
            hydra:
              sweeper:
                params:
                  inner_loop.lrr: tag(log, interval(0.001, 0.1))
            """
        )
    )
    in_preset = run_cli(
        "maml-train", "--config-dir", "conf", f"{SEARCH}=typo", *SWEEP_JOB, "hydra.sweep.dir=a", cwd=tmp_path
    )
    on_command_line = run_cli(
        "maml-train",
        "-m",
        f"{SEARCH}=sinusoid_optuna",
        "inner_loop.lrr=interval(0.001,0.1)",
        *SWEEP_JOB,
        "hydra.sweep.dir=b",
        cwd=tmp_path,
    )
    for proc, where in ((in_preset, "hydra.sweeper.params"), (on_command_line, "the command line")):
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert error_lines(proc.stderr) == [
            f"error: the Optuna search space ({where}) names 'inner_loop.lrr', which is not a config key "
            "(did you mean 'inner_loop.lr'?); see the keys with --cfg job"
        ]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # no study was opened
