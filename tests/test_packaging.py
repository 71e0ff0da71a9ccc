"""A plain (non-editable) install carries the configs, so the commands work from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_configs_and_cli_runs_from_elsewhere(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    wheel = next((tmp_path / "dist").glob("maml_cli-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    repo_configs = {p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml")}
    assert {f"maml_cli/{name}" for name in repo_configs} <= names
    assert any(name.endswith("entry_points.txt") for name in names)

    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import maml_cli.cli.train as t, sys; sys.argv=['maml-train','--cfg','job',"
            "'inner_loop=fomaml']; print(t.__file__); t.main()",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    where, config = proc.stdout.split("\n", 1)
    assert where.startswith(str(tmp_path / "site"))  # the installed copy, not the checkout
    assert yaml.safe_load(config)["inner_loop"]["first_order"] is True
