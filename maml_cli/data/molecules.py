"""Molecules as features: Morgan (ECFP-like) fingerprints of SMILES strings, computed with RDKit.

A table of (assay, SMILES, active) rows is then a few-shot benchmark in the setting of FS-Mol
(Stanley et al., 2021): each assay is a task, and a model meta-trained on many assays adapts to a
new one from a few labelled molecules. RDKit is the optional extra ``maml-cli[chem]``; it is
imported only when ``dataset.smiles_column`` is set.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np

from maml_cli.errors import ConfigError

log = logging.getLogger("maml_cli")

INSTALL_HINT = "pip install 'maml-cli[chem]'"


def _rdkit():
    try:
        from rdkit import Chem, RDLogger
        from rdkit.Chem import rdFingerprintGenerator
    except ImportError:
        raise ConfigError(f"dataset.smiles_column needs RDKit: {INSTALL_HINT}") from None
    return Chem, RDLogger, rdFingerprintGenerator


@contextmanager
def _quiet(rdlogger):
    """RDKit prints a multi-line complaint to stderr for every SMILES it cannot parse; we count
    them and say so in one log line instead."""
    rdlogger.DisableLog("rdApp.*")
    try:
        yield
    finally:
        rdlogger.EnableLog("rdApp.*")


def morgan_fingerprints(smiles: Sequence[object], radius: int = 2, bits: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Morgan fingerprints of the distinct strings in ``smiles``.

    Returns ``(fingerprints, index)``: ``fingerprints`` is ``uint8 [M, bits]`` (0/1), one row per
    distinct valid molecule, and ``index`` is ``int64 [len(smiles)]``, the row of each input in
    ``fingerprints``, or -1 where the string is empty, missing or not a molecule RDKit can parse.
    Uses RDKit's generator API (``rdFingerprintGenerator.GetMorganGenerator``).
    """
    if radius < 0 or bits < 1:
        raise ConfigError(
            f"dataset.fingerprint_radius must be >= 0 and dataset.fingerprint_bits >= 1, got {radius} and {bits}"
        )
    Chem, RDLogger, rdFingerprintGenerator = _rdkit()
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=int(radius), fpSize=int(bits))
    distinct: dict[str, int] = {}  # SMILES string -> its row in rows, or -1
    rows: list[np.ndarray] = []
    index = np.full(len(smiles), -1, dtype=np.int64)
    with _quiet(RDLogger):
        for i, value in enumerate(smiles):
            text = value.strip() if isinstance(value, str) else ""
            if not text:
                continue  # RDKit reads "" as an empty molecule; a missing cell is no molecule
            if text not in distinct:
                mol = Chem.MolFromSmiles(text)
                if mol is None:
                    distinct[text] = -1
                else:
                    distinct[text] = len(rows)
                    rows.append(generator.GetFingerprintAsNumPy(mol).astype(np.uint8))
            index[i] = distinct[text]
    fingerprints = np.stack(rows) if rows else np.zeros((0, bits), dtype=np.uint8)
    return fingerprints, index
