"""maml-adapt and maml-predict on models meta-trained on a table (dataset=table): the checkpoint's
``inputs`` hold training's encoder, and a user's CSV rows become exactly the features training
built (bit for bit); regression, classification named by the original class values, molecules;
bad rows named. Three tiny runs are trained once for the module, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import maml_cli
from maml_cli.cli import adapt as adapt_cli
from maml_cli.cli import predict as predict_cli
from maml_cli.data.table import TableTasks
from maml_cli.data.table_files import TableEncoder
from maml_cli.deploy.inputs import read_csv, read_support_folder, read_table_rows
from maml_cli.engine import Trainer
from maml_cli.engine.checkpoint import load_checkpoint
from maml_cli.errors import ConfigError, MamlError

from .helpers import compose_train, csv_rows, one_error_line
from .test_table_dataset import MOLECULE_SPLITS, molecule_table, sensor_table, write

SMALL = (
    "trainer.max_steps=2",
    "trainer.val_every=2",
    "trainer.val_tasks=4",
    "trainer.ckpt_every=2",
    "trainer.meta_batch_size=2",
    "inner_loop.eval_steps=2",
    "trainer.progress=false",
    "trainer.figures=false",
)


def _sensors() -> pd.DataFrame:
    """The sensor table with every kind of column: a float with gaps, a boolean, an integer listed
    as categorical (its gaps make it float in the file), text with a gap."""
    frame = sensor_table(sensors=9, readings=16)
    frame["windy"] = (frame.index % 3) == 0
    frame["zone"] = (frame.index % 4).astype(float)
    frame.loc[frame.index % 11 == 0, "humidity"] = np.nan
    frame.loc[frame.index % 13 == 0, "zone"] = np.nan
    frame.loc[frame.index % 17 == 0, "mount"] = np.nan
    return frame


def _train(root: Path, *overrides: str) -> Path:
    Trainer(compose_train(*overrides, *SMALL), root / "run").fit()
    return root / "run" / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    root = tmp_path_factory.mktemp("regression")
    path = write(_sensors(), root / "sensors.csv")
    table = (f"dataset.path={path}", "dataset.task_column=sensor", "dataset.target_column=reading")
    keys = (*table, "dataset.categorical_columns=[zone]", "dataset.shots=3", "dataset.query=4")
    return _train(root, "experiment=table_regression", *keys, "model.hidden_sizes=[8]"), path


@pytest.fixture(scope="module")
def classification(tmp_path_factory):
    root = tmp_path_factory.mktemp("classification")
    frame = sensor_table(sensors=9, readings=20)
    frame["busy"] = frame.reading > frame.groupby("sensor").reading.transform("median")
    path = write(frame.drop(columns="reading"), root / "busy.csv")
    table = (f"dataset.path={path}", "dataset.task_column=sensor", "dataset.target_column=busy")
    keys = (*table, "dataset.shots=2", "dataset.query=3", "model.hidden_sizes=[8]")
    return _train(root, "experiment=table_classification", *keys), path


@pytest.fixture(scope="module")
def molecules(tmp_path_factory):
    pytest.importorskip("rdkit")
    root = tmp_path_factory.mktemp("molecules")
    path = write(molecule_table(invalid=2), root / "assays.csv")
    table = (f"dataset.path={path}", "dataset.task_column=assay", "dataset.smiles_column=smiles")
    keys = (*table, "dataset.target_column=active", *MOLECULE_SPLITS, "dataset.shots=2", "dataset.query=2")
    return _train(
        root, "experiment=molecules_fsmol", *keys, "dataset.fingerprint_bits=64", "model.hidden_sizes=[8]"
    ), path


def _lines(path: Path, rows, header: str | None = None) -> str:
    """The header and the given data rows (0 = first after the header) of ``path``, as written."""
    lines = path.read_text().splitlines()
    return "\n".join([header or lines[0], *(lines[1 + i] for i in rows)]) + "\n"


# -- the encoding ---------------------------------------------------------------------------------


def test_the_checkpoint_keeps_the_encoder_as_plain_data(regression, classification):
    inputs = load_checkpoint(regression[0])["inputs"]
    assert inputs["problem"] == "regression" and inputs["ways"] is None
    table = inputs["table"]
    assert table["feature_columns"] == ["temperature", "humidity", "mount", "windy", "zone"]
    assert table["target_column"] == "reading" and table["task_column"] == "sensor" and table["smiles"] is None
    assert [n["column"] for n in table["numeric"]] == ["temperature", "humidity", "windy"]
    assert [n["kind"] for n in table["numeric"]] == ["float64", "float64", "bool"]
    assert [(c["column"], c["kind"]) for c in table["categorical"]] == [("mount", "text"), ("zone", "float64")]
    assert table["categorical"][1]["categories"] == ["0.0", "1.0", "2.0", "3.0"]
    assert inputs["input_shape"] == [3 + 3 + 4]
    assert json.loads(json.dumps(inputs)) == inputs  # plain data
    assert TableEncoder.from_spec(table).to_spec() == {k: table[k] for k in TableEncoder.from_spec(table).to_spec()}
    classes = load_checkpoint(classification[0])["inputs"]
    assert classes["ways"] == 2 and classes["table"]["classes"] == [False, True]


@pytest.mark.parametrize("which", ["regression", "molecules"])
def test_deployed_rows_are_the_training_features_bit_for_bit(which, request, tmp_path):
    checkpoint, path = request.getfixturevalue(which)
    spec = maml_cli.load(checkpoint).inputs
    cfg = load_checkpoint(checkpoint)["config"]["dataset"]
    keys = {k: v for k, v in cfg.items() if k != "_target_"}
    tasks = TableTasks(**keys)
    frame = pd.read_csv(path)
    task = tasks.task_names[0] if which == "regression" else "cox"
    # Rows of a meta-training task (gaps and all), as the file has them; molecules: the readable ones.
    rows = np.flatnonzero(frame[cfg["task_column"]].astype(str).to_numpy() == task)
    if which == "molecules":
        rows = rows[rows < len(frame) - 2]  # the two unreadable SMILES are the file's last rows
    subset = tmp_path / "rows.csv"
    subset.write_text(_lines(path, rows))
    x, y, ids = read_csv(subset, spec, with_target=False)
    expected = tasks._features(torch.from_numpy(rows))
    assert y is None and ids == [str(i + 1) for i in range(len(rows))]
    assert x.dtype == expected.dtype == torch.float32 and torch.equal(x, expected)
    # Parquet reads the same rows into the same features.
    write(frame.iloc[rows], tmp_path / "rows.parquet")
    assert torch.equal(read_csv(tmp_path / "rows.parquet", spec, with_target=False)[0], expected)


# -- the commands, end to end ----------------------------------------------------------------------


def test_adapt_and_predict_a_regression_table(regression, tmp_path, capsys):
    checkpoint, path = regression
    frame = pd.read_csv(path)
    spec = maml_cli.load(checkpoint).inputs
    rows = np.flatnonzero(frame.sensor.to_numpy() == "S08")
    support, query = tmp_path / "support.csv", tmp_path / "query.csv"
    support.write_text(_lines(path, rows[:5]))  # the task column comes along and is ignored
    query_frame = frame.iloc[rows[5:]].drop(columns=["reading", "sensor"]).assign(id=[f"r{i}" for i in rows[5:]])
    query_frame.to_csv(query, index=False)
    adapted_path = tmp_path / "adapted.pt"
    assert adapt_cli.main([f"checkpoint={checkpoint}", f"support={support}", f"output={adapted_path}"]) == 0
    out = capsys.readouterr().out
    assert "5 support rows in 2 steps" in out and "support mse" in out
    predictions = tmp_path / "p.csv"
    assert predict_cli.main([f"model={adapted_path}", f"inputs={query}", f"output={predictions}"]) == 0
    assert capsys.readouterr().out.startswith(f"{len(rows) - 5} inputs: mean prediction ")
    written = csv_rows(predictions)
    assert list(written[0]) == ["input", "prediction"] and [r["input"] for r in written] == list(query_frame.id)
    adapted = maml_cli.load_adapted(adapted_path)
    x, _, _ = read_csv(query, spec, with_target=False)
    expected = adapted.predict(x).flatten()
    got = torch.tensor([float(r["prediction"]) for r in written])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_classification_is_named_by_the_original_class_values(classification, tmp_path, capsys):
    checkpoint, path = classification
    frame = pd.read_csv(path)
    rows = np.flatnonzero(frame.sensor.to_numpy() == "S08")
    support_rows = [*rows[frame.busy.to_numpy()[rows]][:3], *rows[~frame.busy.to_numpy()[rows]][:3]]
    support, query = tmp_path / "support.csv", tmp_path / "query.csv"
    support.write_text(_lines(path, support_rows))
    query.write_text(_lines(path, [r for r in rows if r not in support_rows]))  # with its target: left out
    predictions = tmp_path / "p.csv"
    argv = [f"checkpoint={checkpoint}", f"support={support}", f"inputs={query}", f"predictions={predictions}"]
    assert adapt_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "6 support" in out and "of 2 classes (False, True)" in out and "support accuracy" in out
    written = csv_rows(predictions)
    assert list(written[0]) == ["input", "prediction", "p_False", "p_True"]
    assert {r["prediction"] for r in written} <= {"False", "True"} and len(written) == len(rows) - 6
    meta = maml_cli.load(checkpoint)
    x, y, classes = read_support_folder(support, meta.inputs)  # maml-adapt's reader, a CSV for a table model
    assert classes == ["False", "True"] and y.tolist() == [1, 1, 1, 0, 0, 0]
    adapted = meta.adapt(x, y, classes=classes)
    qx, _, _ = read_csv(query, meta.inputs, with_target=False)
    expected = adapted.predict(qx)
    got = torch.tensor([[float(r["p_False"]), float(r["p_True"])] for r in written])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert [r["prediction"] for r in written] == [classes[i] for i in expected.argmax(-1).tolist()]


def test_molecules_adapt_and_predict_with_real_smiles(molecules, tmp_path, capsys):
    checkpoint, path = molecules
    frame = pd.read_csv(path)
    cns = frame[frame.assay == "cns"]
    support = pd.concat([cns[cns.active == 1][:2], cns[cns.active == 0][:2]])
    write(support[["smiles", "active"]], tmp_path / "support.csv")
    query = cns.drop(support.index)[["smiles"]].assign(id=lambda f: [f"m{i}" for i in f.index])
    write(query, tmp_path / "query.csv")
    predictions = tmp_path / "p.csv"
    argv = [f"checkpoint={checkpoint}", f"support={tmp_path / 'support.csv'}", f"inputs={tmp_path / 'query.csv'}"]
    assert adapt_cli.main([*argv, f"predictions={predictions}", f"output={tmp_path / 'a.pt'}"]) == 0
    assert "of 2 classes (0, 1)" in capsys.readouterr().out
    written = csv_rows(predictions)
    assert list(written[0]) == ["input", "prediction", "p_0", "p_1"] and len(written) == 8
    assert [r["input"] for r in written] == list(query.id)
    x, _, _ = read_csv(tmp_path / "query.csv", maml_cli.load(checkpoint).inputs, with_target=False)
    assert x.shape == (8, 64) and set(x.unique().tolist()) <= {0.0, 1.0}
    expected = maml_cli.load_adapted(tmp_path / "a.pt").predict(x)
    torch.testing.assert_close(torch.tensor([float(r["p_1"]) for r in written]), expected[:, 1], rtol=1e-6, atol=1e-6)


# -- bad rows ------------------------------------------------------------------------------------


def test_bad_rows_are_named_and_gaps_filled_as_training_did(regression, molecules, tmp_path, capsys, caplog):
    checkpoint, path = regression
    spec = maml_cli.load(checkpoint).inputs
    good = "temperature,humidity,mount,windy,zone,reading\n"
    file = tmp_path / "t.csv"

    file.write_text("temperature,mount,windy,zone\n1,roof,True,1\n")
    assert adapt_cli.main([f"checkpoint={checkpoint}", f"support={file}", "output=" + str(tmp_path / "a.pt")]) == 1
    error = one_error_line(capsys)
    assert "lacks column(s) humidity, reading" in error and "other columns are ignored" in error
    assert not (tmp_path / "a.pt").exists()

    file.write_text(good + "1,50,roof,True,1,0.5\n2,high,roof,False,2,0.1\n")
    with pytest.raises(MamlError, match=r"column humidity holds values that are not numbers in row"):
        read_csv(file, spec, with_target=True)

    # A missing number is the meta-training mean (0), a missing or unseen category all zeros: said, not refused.
    file.write_text(good + "1,,roof,True,1,0.5\n2,40,basement,False,,0.1\n3,40,roof,false,2.0,0.2\n")
    with caplog.at_level("INFO", logger="maml_cli"):
        x, y, _ = read_csv(file, spec, with_target=True)
    assert "1 missing numbers (humidity; row(s) 1) taken as the meta-training mean" in caplog.text
    assert "1 categories unseen in meta-training (mount; row(s) 2) encoded as none" in caplog.text
    assert x[0, 1] == 0 and x[1, 3:6].sum() == 0 and x[1, 6:].sum() == 0  # humidity; mount; zone
    assert torch.equal(x[2, 6:], torch.tensor([0.0, 0.0, 1.0, 0.0]))  # zone 2.0 (written 2 or 2.0 alike)
    assert x[1, 2] == x[2, 2] and y.shape == (3, 1)  # windy False / false

    file.write_text(good.replace(",reading", "") + "1,50,roof,True,1\n")
    with pytest.raises(MamlError, match="lacks column"):
        read_csv(file, spec, with_target=True)
    with pytest.raises(ConfigError, match="not image files"):
        read_support_folder(tmp_path, {"problem": "classification", "input_shape": [1]})

    checkpoint, _ = molecules
    spec = maml_cli.load(checkpoint).inputs
    file.write_text("smiles,active\nCCO,1\nC1CC(,0\nc1ccccc1,0\nnot a molecule,1\n")
    with pytest.raises(MamlError, match=r"RDKit cannot read the SMILES of column smiles in row\(s\) 2, 4"):
        read_table_rows(file, spec, with_target=False)
    file.write_text("smiles,active\nCCO,1\nc1ccccc1,1\n")
    with pytest.raises(MamlError, match=r"the support set has one class \(1\)"):
        read_table_rows(file, spec, with_target=True)
