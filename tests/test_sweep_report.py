"""``maml-sweep-report`` on real sweeps: a multirun over inner_loop.lr with a diverging job, and a
three-trial Optuna study. The table, CSV, best config's line, figure and TensorBoard HParams logs
are checked against what the jobs wrote (``metrics.json``, ``jobs.jsonl``, ``.hydra/``)."""

from __future__ import annotations

import csv
import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from maml_cli.cli import sweeps  # noqa: F401  (the ${maml_...} resolvers the search presets use)
from maml_cli.cli.sweep_report import main
from maml_cli.config import config_dir, register_configs

from .helpers import SWEEP_JOB, compose_train, run_cli

#: An inner step of 1e6 makes the meta-loss non-finite at step 1 (no metrics.json).
RATES = ("0.001", "0.01", "1e6")


@pytest.fixture(scope="module")
def multirun(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multirun")
    rates = f"inner_loop.lr={','.join(RATES)}"
    proc = run_cli("maml-train", "-m", rates, *SWEEP_JOB, "hydra.sweep.dir=sweep", cwd=root)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the diverging job fails the multirun at its end
    assert "error: 1 of 3 jobs failed in sweep: job 2" in proc.stderr
    return root / "sweep"


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """tests/test_sweeps.py's study: seed 11 draws inner_loop.lr 0.01, 0.01, 1e6 (trial 2 diverges)."""
    root = tmp_path_factory.mktemp("optuna")
    search = ("hparams_search=sinusoid_optuna", "seed=11", "inner_loop.lr=choice(0.01,1e6)", "hydra.sweeper.n_trials=3")
    proc = run_cli("maml-train", "-m", *search, *SWEEP_JOB, "hydra.sweep.dir=study", cwd=root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: 1 of 3 jobs failed in study: job 2 " in proc.stderr, proc.stderr
    return root / "study"


def report(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(out: str, columns: int) -> list[list[str]]:
    """The table's rows (after its header line), split on runs of spaces."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("rank")) + 1
    rows = []
    for line in lines[start:]:
        cells = line.split()
        if len(cells) != columns:
            break
        rows.append(cells)
    return rows


def best_lines(out: str) -> tuple[str, str]:
    """The ``best: ...`` line and the command line after it."""
    lines = out.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("best: "))
    return lines[i], lines[i + 1]


def as_yaml(cfg) -> dict:
    """A composed config as its job's ``.hydra/config.yaml`` holds it (enums by name, unresolved)."""
    return yaml.safe_load(OmegaConf.to_yaml(cfg))


def compose_with_hydra(*overrides: str):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def records(sweep_dir: Path) -> dict[str, dict]:
    return {r["job"]: r for r in map(json.loads, (sweep_dir / "jobs.jsonl").read_text().splitlines())}


def hparams_runs(logdir: Path) -> dict[str, dict]:
    """What TensorBoard reads from each run of ``logdir``: hparams, session status, scalars."""
    runs = {}
    for run in sorted({p.parent for p in logdir.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(run))
        acc.Reload()
        content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
        found: dict = {"scalars": {t: acc.Scalars(t)[-1].value for t in acc.Tags()["scalars"]}}
        if metadata.EXPERIMENT_TAG in content:
            exp = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
            found["experiment"] = ([h.name for h in exp.hparam_infos], [m.name.tag for m in exp.metric_infos])
        if metadata.SESSION_START_INFO_TAG in content:
            start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
            found["hparams"] = {k: v.number_value for k, v in start.hparams.items()}
            end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
            found["status"] = end.status
        runs[run.relative_to(logdir).as_posix()] = found
    return runs


def test_a_multirun_is_ranked_by_its_metric_with_the_diverged_job_last(multirun, capsys):
    code, out, err = report(capsys, str(multirun))
    assert code == 0, err
    good = {job: metrics(multirun / job) for job in ("0", "1")}
    assert not (multirun / "2/metrics.json").exists()
    ranked = sorted(good, key=lambda job: good[job]["best"]["value"])  # an MSE: lower is better
    rows = table_rows(out, 8)
    assert [r[1] for r in rows] == [*ranked, "2"]
    for rank, (row, job) in enumerate(zip(rows, ranked), 1):
        m = good[job]
        lr = RATES[int(job)]
        assert row == [
            str(rank), job, f"{float(lr):.4g}", f"{m['best']['value']:.4g}",
            str(m["best"]["step"]), "3", f"{m['wall_time_s']:.1f}", "ok",
        ]  # fmt: skip
    assert rows[2] == ["-", "2", "1e+06", "-", "-", "-", "-", "diverged"]
    error = records(multirun)["2"]["error"]
    assert error.startswith("meta-loss is ") and "at step 1" in error
    assert f"job 2 diverged: {error}" in out.splitlines()

    # The best config's line: the best job's overrides; it composes to exactly that job's config.
    header, line = best_lines(out)
    assert header == f"best: job {ranked[0]}, mse {good[ranked[0]]['best']['value']:.4g}; run it once with:"
    command, *overrides = shlex.split(line)
    assert command == "maml-train"
    assert overrides == yaml.safe_load((multirun / ranked[0] / ".hydra/overrides.yaml").read_text())
    assert as_yaml(compose_train(*overrides)) == yaml.safe_load(
        (multirun / ranked[0] / ".hydra/config.yaml").read_text()
    )

    with (multirun / "sweep_report.csv").open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [r["job"] for r in csv_rows] == [*ranked, "2"]
    assert [float(r["best_mse"]) for r in csv_rows[:2]] == [good[j]["best"]["value"] for j in ranked]
    assert (csv_rows[2]["status"], csv_rows[2]["error"], csv_rows[2]["best_mse"]) == ("diverged", error, "")

    with Image.open(multirun / "sweep_report.png") as png:
        assert png.format == "PNG"
        assert png.size == (400, 340)  # one 4-inch panel at 100 dpi
        assert png.text["Description"] == "maml-sweep-report panels: inner_loop.lr"

    runs = hparams_runs(multirun / "tb_hparams")
    assert set(runs) == {".", "0", "1", "2"}
    assert runs["."]["experiment"] == (["inner_loop.lr"], ["sweep/best_mse", "sweep/steps", "sweep/wall_time_s"])
    for job in ("0", "1", "2"):
        assert runs[job]["hparams"] == {"inner_loop.lr": float(RATES[int(job)])}
    for job in ranked:
        assert runs[job]["status"] == 1  # STATUS_SUCCESS
        assert runs[job]["scalars"]["sweep/best_mse"] == pytest.approx(good[job]["best"]["value"], rel=1e-6)
        assert runs[job]["scalars"]["sweep/steps"] == 3
    assert runs["2"]["status"] == 2  # STATUS_FAILURE
    assert runs["2"]["scalars"] == {}


def test_an_optuna_study_is_reported_and_its_best_line_runs_the_trial_once(study, capsys):
    code, out, err = report(capsys, str(study), "top=1")
    assert code == 0, err
    keys = ["inner_loop.lr", "optimizer.lr", "inner_loop.steps", "trainer.meta_batch_size"]  # the preset's space
    assert out.splitlines()[1].split()[2:6] == keys
    good = {job: metrics(study / job) for job in ("0", "1", "2") if (study / job / "metrics.json").exists()}
    failed = [job for job, r in records(study).items() if r["error"] is not None]
    assert len(good) == 2 and len(failed) == 1, (good, failed)
    best = min(good, key=lambda job: good[job]["best"]["value"])
    rows = table_rows(out, 11)
    assert len(rows) == 1 and rows[0][:2] == ["1", best]  # top=1
    assert f"... 2 more in {study / 'sweep_report.csv'}" in out
    assert f"job {failed[0]} diverged: " in out  # failures are listed even when not in the top

    with Image.open(study / "sweep_report.png") as png:
        assert png.size == (1600, 340)  # four panels
        assert png.text["Description"] == f"maml-sweep-report panels: {', '.join(keys)}"
    runs = hparams_runs(study / "tb_hparams")
    assert runs["."]["experiment"][0] == keys
    assert runs[failed[0]]["status"] == 2 and runs[best]["status"] == 1

    # The line keeps the preset (its settings) and runs it once: hydra.mode=RUN, not another search.
    _, line = best_lines(out)
    command, *overrides = shlex.split(line)
    assert command == "maml-train"
    assert overrides[-2:] == ["trainer.progress=False", "hydra.mode=RUN"]
    assert "hparams_search=sinusoid_optuna" in overrides
    assert compose_with_hydra(*overrides).hydra.mode == RunMode.RUN
    assert as_yaml(compose_train(*overrides)) == yaml.safe_load((study / best / ".hydra/config.yaml").read_text())


def test_a_damaged_metrics_json_is_a_row_not_a_crash(multirun, tmp_path, capsys):
    copy = tmp_path / "sweep"
    shutil.copytree(multirun, copy, ignore=shutil.ignore_patterns("checkpoints", "tb", "tb_hparams"))
    (copy / "1/metrics.json").write_text('{"metric": "mse", "best": {"value": ')
    code, out, err = report(capsys, f"dir={copy}")
    assert code == 0, err
    rows = table_rows(out, 8)
    assert [(r[1], r[-1]) for r in rows] == [("0", "ok"), ("1", "damaged"), ("2", "diverged")]
    assert rows[0][3] == f"{metrics(multirun / '0')['best']['value']:.4g}"
    damaged = next(line for line in out.splitlines() if line.startswith("job 1 damaged: "))
    assert damaged.startswith("job 1 damaged: metrics.json is damaged: Expecting value")
    assert hparams_runs(copy / "tb_hparams")["1"]["status"] == 2


def test_a_folder_without_runs_is_one_line_and_exit_1(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    proc = run_cli("maml-sweep-report", "empty", cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "error: no runs in empty: no job dir with .hydra/overrides.yaml in it; give a multirun's hydra.sweep.dir "
        "(maml-train -m ... writes multirun/DATE/TIME by default)"
    ]
    assert not list((tmp_path / "empty").iterdir())  # nothing written
    assert report(capsys, str(tmp_path / "nowhere"))[::2] == (
        1,
        f"error: {tmp_path / 'nowhere'} does not exist; give a multirun's sweep dir (hydra.sweep.dir)\n",
    )
    assert report(capsys, str(tmp_path / "empty"), "top=0")[::2] == (
        1,
        "error: top must be a whole number of at least 1, got '0'\n",
    )
