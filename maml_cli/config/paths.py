"""Where the YAML configs live, in a source checkout and in an installed wheel alike."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def config_dir() -> Path:
    """The ``configs/`` directory.

    A wheel ships it inside the package as ``maml_cli/configs`` (see ``pyproject.toml``); in a
    source checkout or an editable install it is the top-level ``configs/`` beside the package.
    """
    for candidate in (_PACKAGE_DIR / "configs", _PACKAGE_DIR.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"maml-cli's configs/ directory is missing next to {_PACKAGE_DIR}: reinstall the package")
