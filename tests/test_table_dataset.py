"""Few-shot tasks from a user's table (``dataset=table``) and from molecules (``smiles_column``):
encoding, splits, episodes, metrics, bad input, and the presets end to end through the CLIs."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import fields

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from maml_cli.config import config_dir
from maml_cli.config.datasets import DATASET_SCHEMAS
from maml_cli.data.table import TableTasks, average_precision, roc_auc
from maml_cli.engine import Trainer
from maml_cli.engine.checkpoint import load_checkpoint
from maml_cli.errors import ConfigError

from .helpers import compose_train, run_cli
from .test_cli import assert_one_line_error

QUIET = ("trainer.progress=false",)

# -- fixtures: tables written in the test ---------------------------------------------------------


def sensor_table(sensors: int = 12, readings: int = 16, seed: int = 0) -> pd.DataFrame:
    """Readings of sensors with gains of their own and an offset by mount (a text column)."""
    rng = np.random.default_rng(seed)
    mounts = {"indoor": 0.0, "outdoor": 1.5, "roof": -1.0}
    rows = []
    for s in range(sensors):
        gain = rng.uniform(-2, 2)
        mount = list(mounts)[s % 3]
        for _ in range(readings):
            temperature = rng.uniform(-10, 35)
            rows.append((f"S{s:02d}", temperature, rng.uniform(20, 90), mount, gain * temperature / 10 + mounts[mount]))
    return pd.DataFrame(rows, columns=["sensor", "temperature", "humidity", "mount", "reading"])


# Real molecules (checked with RDKit: each parses, with its known molecular weight).
MOLECULES = {
    "aspirin": "CC(=O)OC1=CC=CC=C1C(=O)O",
    "caffeine": "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
    "ibuprofen": "CC(C)CC1=CC=C(C=C1)C(C)C(=O)O",
    "paracetamol": "CC(=O)NC1=CC=C(C=C1)O",
    "naproxen": "COC1=CC2=C(C=C1)C=C(C=C2)C(C)C(=O)O",
    "diclofenac": "OC(=O)CC1=CC=CC=C1NC1=C(Cl)C=CC=C1Cl",
    "ketoprofen": "CC(C(=O)O)C1=CC(=CC=C1)C(=O)C2=CC=CC=C2",
    "salicylic_acid": "OC(=O)C1=CC=CC=C1O",
    "theophylline": "CN1C2=C(C(=O)N(C1=O)C)NC=N2",
    "theobromine": "CN1C=NC2=C1C(=O)NC(=O)N2C",
    "nicotine": "CN1CCCC1C2=CN=CC=C2",
    "metformin": "CN(C)C(=N)NC(=N)N",
    "glucose": "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O",
    "ethanol": "CCO",
    "benzene": "c1ccccc1",
    "toluene": "Cc1ccccc1",
    "phenol": "Oc1ccccc1",
    "acetone": "CC(=O)C",
    "lidocaine": "CCN(CC)CC(=O)NC1=C(C)C=CC=C1C",
    "procaine": "CCN(CC)CCOC(=O)C1=CC=C(N)C=C1",
    "benzocaine": "CCOC(=O)C1=CC=C(N)C=C1",
    "diazepam": "CN1C(=O)CN=C(C2=C1C=CC(=C2)Cl)C3=CC=CC=C3",
    "fluoxetine": "CNCCC(OC1=CC=C(C=C1)C(F)(F)F)C2=CC=CC=C2",
    "sertraline": "CN[C@H]1CC[C@@H](C2=CC=CC=C12)C3=CC(=C(C=C3)Cl)Cl",
    "atenolol": "CC(C)NCC(O)COC1=CC=C(CC(N)=O)C=C1",
    "propranolol": "CC(C)NCC(O)COC1=CC=CC2=CC=CC=C21",
    "metoprolol": "COCCC1=CC=C(OCC(O)CNC(C)C)C=C1",
    "amoxicillin": "CC1(C)S[C@@H]2[C@H](NC(=O)[C@@H](N)C3=CC=C(O)C=C3)C(=O)N2[C@H]1C(O)=O",
    "penicillin_g": "CC1(C)S[C@@H]2[C@H](NC(=O)CC3=CC=CC=C3)C(=O)N2[C@H]1C(O)=O",
    "ciprofloxacin": "OC(=O)C1=CN(C2CC2)C2=CC(N3CCNCC3)=C(F)C=C2C1=O",
    "chloroquine": "CCN(CC)CCCC(C)NC1=C2C=CC(Cl)=CC2=NC=C1",
    "omeprazole": "COC1=CC2=C(C=C1)N=C(N2)S(=O)CC3=NC=C(C(=C3C)OC)C",
    "warfarin": "CC(=O)CC(C1=CC=CC=C1)C2=C(O)C3=CC=CC=C3OC2=O",
    "captopril": "C[C@H](CS)C(=O)N1CCC[C@H]1C(O)=O",
    "sildenafil": "CCCC1=NN(C)C2=C1N=C(NC2=O)C1=C(OCC)C=CC(=C1)S(=O)(=O)N1CCN(C)CC1",
    "dopamine": "NCCC1=CC(O)=C(O)C=C1",
    "serotonin": "NCCC1=CNC2=C1C=C(O)C=C2",
    "adrenaline": "CNC[C@H](O)C1=CC(O)=C(O)C=C1",
    "histamine": "NCCC1=CN=CN1",
    "melatonin": "CC(=O)NCCC1=CNC2=C1C=C(OC)C=C2",
    "testosterone": "C[C@]12CC[C@H]3[C@@H](CCC4=CC(=O)CC[C@]34C)[C@@H]1CC[C@@H]2O",
    "haloperidol": "OC1(CCN(CCCC(=O)C2=CC=C(F)C=C2)CC1)C1=CC=C(Cl)C=C1",
    "morphine": "CN1CC[C@]23C4=C5C=CC(O)=C4O[C@H]2[C@@H](O)C=C[C@H]3[C@H]1C5",
}
# Made-up assays: (actives, inactives), loosely after what the drugs do.
ASSAYS = {
    "cox": (
        ["aspirin", "ibuprofen", "naproxen", "diclofenac", "ketoprofen", "salicylic_acid"],
        ["caffeine", "ethanol", "benzene", "metformin", "glucose", "nicotine"],
    ),
    "adenosine": (
        ["caffeine", "theophylline", "theobromine", "sildenafil"],
        ["aspirin", "glucose", "acetone", "toluene", "lidocaine"],
    ),
    "beta_adrenergic": (
        ["atenolol", "propranolol", "metoprolol", "adrenaline", "dopamine"],
        ["ibuprofen", "caffeine", "benzocaine", "phenol", "glucose"],
    ),
    "sodium_channel": (
        ["lidocaine", "procaine", "benzocaine", "fluoxetine"],
        ["metformin", "glucose", "histamine", "ethanol", "aspirin"],
    ),
    "antibacterial": (
        ["amoxicillin", "penicillin_g", "ciprofloxacin", "chloroquine"],
        ["paracetamol", "naproxen", "serotonin", "testosterone", "warfarin"],
    ),
    "cns": (
        ["diazepam", "fluoxetine", "sertraline", "haloperidol", "morphine", "nicotine"],
        ["metformin", "amoxicillin", "glucose", "captopril", "omeprazole", "melatonin"],
    ),
}
MOLECULE_SPLITS = (
    "dataset.train_tasks=[cox,adenosine,beta_adrenergic,sodium_channel]",
    "dataset.val_tasks=[antibacterial]",
    "dataset.test_tasks=[cns]",
)


def molecule_table(invalid: int = 2) -> pd.DataFrame:
    rows = [
        (assay, MOLECULES[name], label)
        for assay, groups in ASSAYS.items()
        for label in (1, 0)
        for name in groups[label == 0]
    ]
    rows += [("cox", "C1CC(", 0), ("cox", "not a molecule", 0)][:invalid]
    return pd.DataFrame(rows, columns=["assay", "smiles", "active"])


def write(frame: pd.DataFrame, path):
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def sensors(tmp_path, **kw) -> TableTasks:
    path = write(sensor_table(), tmp_path / "sensors.csv")
    return TableTasks(path=str(path), task_column="sensor", target_column="reading", **kw)


# -- metrics ------------------------------------------------------------------------------------


def test_roc_auc_and_average_precision_by_hand():
    # scikit-learn's documented example: AUC 0.75, average precision 0.8333.
    scores, labels = torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])
    assert roc_auc(scores, labels == 1).item() == pytest.approx(0.75)
    assert average_precision(scores, labels == 1).item() == pytest.approx(5 / 6)
    # Ties: ranks 2.5, 2.5, 1, 4; positives' rank sum 6.5 - 2 * 3 / 2 = 3.5 of 2 * 2 pairs.
    tied, labels = torch.tensor([0.5, 0.5, 0.2, 0.9]), torch.tensor([1, 0, 0, 1])
    assert roc_auc(tied, labels == 1).item() == pytest.approx(0.875)
    assert average_precision(tied, labels == 1).item() == pytest.approx((1 + 2 / 3) / 2)
    # Under vmap, as the engine scores tasks; perfect and reversed rankings.
    batch = torch.stack([torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0.9, 0.8, 0.2, 0.1])])
    auc = torch.func.vmap(roc_auc)(batch, torch.tensor([[0, 0, 1, 1]] * 2) == 1)
    assert auc.tolist() == [1.0, 0.0]


def test_classification_metrics_score_label_one_and_nan_when_diverged(tmp_path):
    path = write(molecule_table(invalid=0), tmp_path / "m.csv")
    tasks = TableTasks(
        path=str(path),
        task_column="assay",
        target_column="active",
        smiles_column="smiles",
        problem="classification",
        metric="delta_auprc",
        fingerprint_bits=64,
        shots=2,
        query=2,
    )
    logits = torch.tensor([[0.0, -1.0], [0.0, 1.0], [0.0, 2.0], [0.0, -2.0]])
    target = torch.tensor([0, 1, 1, 0])
    assert tasks.metric(logits, target).item() == pytest.approx(0.5)  # AP 1 over a base rate of 0.5
    tasks.metric_name = "roc_auc"
    assert tasks.metric(logits, target).item() == 1.0
    assert torch.isnan(tasks.metric(torch.full((4, 2), torch.nan), target))


# -- encoding, splits, episodes -------------------------------------------------------------------


def test_features_are_standardised_and_one_hot_from_meta_training_tasks_only(tmp_path):
    frame = sensor_table()
    test_sensors = ["S10", "S11"]
    frame.loc[frame.sensor.isin(test_sensors), "temperature"] += 1000.0  # would move the mean if used
    frame.loc[frame.sensor == "S11", "mount"] = "basement"  # a category only a test task has
    path = write(frame, tmp_path / "shifted.csv")
    tasks = TableTasks(
        path=str(path),
        task_column="sensor",
        target_column="reading",
        train_tasks=[f"S{i:02d}" for i in range(8)],
        val_tasks=["S08", "S09"],
        test_tasks=test_sensors,
    )
    assert tasks.feature_names == ["temperature", "humidity", "mount=indoor", "mount=outdoor", "mount=roof"]
    assert tasks.input_shape == (5,)
    train_rows = torch.tensor(frame.sensor.isin([f"S{i:02d}" for i in range(8)]).to_numpy())
    dense = tasks._dense
    assert dense[train_rows, :2].mean(0).abs().max() < 1e-5
    assert dense[train_rows, :2].std(0, unbiased=False).sub(1).abs().max() < 1e-4
    test_rows = torch.tensor(frame.sensor.isin(test_sensors).to_numpy())
    assert dense[test_rows, 0].min() > 50  # the test tasks' shift is kept, not standardised away
    basement = torch.tensor((frame.mount == "basement").to_numpy())
    assert dense[basement, 2:].abs().sum() == 0  # unseen in training: no category


def test_regression_episodes_and_fixed_held_out_sets(tmp_path):
    tasks = sensors(tmp_path, shots=3, query=4)
    assert tasks.metric_name == "mse" and not tasks.higher_is_better and tasks.ways is None
    batch = tasks.sample(5, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (5, 3, 5) and batch.support_y.shape == (5, 3, 1)
    assert batch.query_x.shape == (5, 4, 5) and batch.query_y.shape == (5, 4, 1)
    # Each episode is one task: a sensor has one mount, so its one-hot block is constant.
    one_hot = torch.cat([batch.support_x, batch.query_x], dim=1)[..., 2:]
    assert (one_hot == one_hot[:, :1]).all()
    whole = torch.cat([b.query_x for b in tasks.held_out("test", 130, 200)])
    pieces = torch.cat([b.query_x for b in tasks.held_out("test", 130, 7)])
    assert torch.equal(whole, pieces)  # which tasks they are does not depend on the batch size
    assert not torch.equal(whole, torch.cat([b.query_x for b in tasks.held_out("val", 130, 200)]))


def test_classification_episodes_keep_the_class_order(tmp_path, caplog):
    frame = molecule_table(invalid=0)
    frame["leak"] = frame.active * 10.0  # a feature that tells the classes apart
    path = write(frame, tmp_path / "m.csv")
    with caplog.at_level(logging.INFO, logger="maml_cli"):
        tasks = TableTasks(
            path=str(path),
            task_column="assay",
            target_column="active",
            smiles_column="smiles",
            feature_columns=["leak"],
            problem="classification",
            fingerprint_bits=128,
            shots=2,
            query=3,
            eval_shots=3,
            train_tasks=["adenosine", "beta_adrenergic", "sodium_channel", "antibacterial"],
            val_tasks=["cox"],
            test_tasks=["cns"],
        )
    assert tasks.num_features == 129 and tasks.feature_names[-1] == "leak" and tasks.ways == 2
    batch = tasks.sample(6, torch.Generator().manual_seed(1))
    assert batch.support_x.shape == (6, 4, 129) and batch.query_y.shape == (6, 6)
    assert batch.support_y[0].tolist() == [0, 0, 1, 1]
    leak = batch.support_x[..., -1]
    assert (leak[batch.support_y == 1] > leak[batch.support_y == 0].max()).all()  # label 1 = active
    bits = batch.support_x[..., :128]
    assert set(bits.unique().tolist()) <= {0.0, 1.0} and bits.sum() > 0
    # shots 2 + query 3 = 5 rows per class: the assays with 4 actives are left out of training.
    assert "skipped 3 of 4 train tasks with fewer than 2 classes with 5 rows each" in caplog.text
    assert "'adenosine', 'antibacterial', 'sodium_channel'" in caplog.text


def test_smiles_rdkit_cannot_read_are_skipped_and_counted(tmp_path, caplog):
    path = write(molecule_table(invalid=2), tmp_path / "m.csv")
    with caplog.at_level(logging.INFO, logger="maml_cli"):
        tasks = TableTasks(
            path=str(path),
            task_column="assay",
            target_column="active",
            smiles_column="smiles",
            problem="classification",
            fingerprint_bits=32,
            shots=2,
            query=2,
        )
    assert "skipped 2 rows whose SMILES RDKit cannot read" in caplog.text
    assert tasks._targets.numel() == len(molecule_table(invalid=0))


# -- bad input: one clear line each --------------------------------------------------------------


@pytest.mark.parametrize(
    "change, keys, fragments",
    [
        (None, {"target_column": "price"}, ["dataset.target_column names 'price'", "its columns are 'sensor'"]),
        (None, {"feature_columns": ["temp"]}, ["dataset.feature_columns names 'temp'", "'humidity'"]),
        (lambda f: f.assign(sensor="one"), {}, ["has 1 task(s) ('one')", "at least one each"]),
        (
            lambda f: f.assign(reading=f.reading.where(f.index != 17)),
            {},
            ["is empty (NaN) in 1 rows", "row 17", "'S01'"],
        ),
        (
            lambda f: f.assign(humidity=f.humidity.astype(object).where(f.index != 5, "?")),
            {},
            ["feature column 'humidity'", "'?' in row 5", "dataset.categorical_columns"],
        ),
        (
            lambda f: f.assign(serial=[f"X{i}" for i in f.index]),
            {},
            ["'serial'", "more than dataset.max_categories=50"],
        ),
        (lambda f: f.assign(reading="high"), {}, ["not a number", "dataset.problem=classification"]),
        (None, {"split_ratios": [1, 0, 0]}, ["leave no val task"]),
        (None, {"shots": 20}, ["none of the", "train tasks", "has 30 rows (shots + query)"]),
        (
            None,
            {"problem": "classification", "metric": "mse"},
            ["dataset.metric for classification is one of accuracy"],
        ),
    ],
)
def test_table_bad_input(tmp_path, change, keys, fragments):
    frame = sensor_table()
    path = write(change(frame) if change else frame, tmp_path / "bad.csv")
    args = {"task_column": "sensor", "target_column": "reading", **keys}
    with pytest.raises(ConfigError) as error:
        TableTasks(path=str(path), **args)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_too_many_unreadable_smiles_is_an_error(tmp_path):
    frame = molecule_table(invalid=0)
    frame.loc[frame.index % 5 == 0, "smiles"] = "C1CC("  # 20% of the rows
    path = write(frame, tmp_path / "m.csv")
    with pytest.raises(
        ConfigError, match=r"RDKit cannot read \d+ of the \d+ SMILES in column 'smiles'.*max_invalid_smiles=0.1"
    ):
        TableTasks(
            path=str(path),
            task_column="assay",
            target_column="active",
            smiles_column="smiles",
            problem="classification",
        )


def test_missing_extras_are_named(tmp_path, monkeypatch):
    parquet = write(sensor_table(), tmp_path / "s.parquet")
    csv = write(molecule_table(), tmp_path / "m.csv")
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "pyarrow", None)
        with pytest.raises(ConfigError, match=r"needs pyarrow: pip install 'maml-cli\[parquet\]'"):
            TableTasks(path=str(parquet), task_column="sensor", target_column="reading")
    monkeypatch.setitem(sys.modules, "rdkit", None)
    with pytest.raises(ConfigError, match=r"^dataset.smiles_column needs RDKit: pip install 'maml-cli\[chem\]'$"):
        TableTasks(
            path=str(csv), task_column="assay", target_column="active", smiles_column="smiles", problem="classification"
        )


# -- configs and the CLIs -------------------------------------------------------------------------


def test_table_yaml_lists_every_key_of_its_schema_and_presets_compose():
    text = yaml.safe_load((config_dir() / "dataset" / "table.yaml").read_text())
    schema = DATASET_SCHEMAS[text["defaults"][0]]
    assert set(text) - {"defaults"} == {f.name for f in fields(schema)} - {"_target_"}
    for preset, problem in (
        ("table_regression", "regression"),
        ("table_classification", "classification"),
        ("molecules_fsmol", "classification"),
    ):
        cfg = compose_train(f"experiment={preset}")
        assert cfg.dataset.problem == problem and cfg.dataset._target_.endswith("TableTasks")
    fsmol = compose_train("experiment=molecules_fsmol")
    assert fsmol.inner_loop.first_order and fsmol.inner_loop.steps == 1 and fsmol.dataset.metric == "roc_auc"


def test_classification_preset_trains_in_process(tmp_path):
    frame = sensor_table(sensors=9, readings=20)
    frame["busy"] = frame.reading > frame.groupby("sensor").reading.transform("median")
    path = write(frame.drop(columns="reading"), tmp_path / "busy.csv")
    cfg = compose_train(
        "experiment=table_classification",
        f"dataset.path={path}",
        "dataset.task_column=sensor",
        "dataset.target_column=busy",
        "dataset.shots=2",
        "dataset.query=3",
        "trainer.max_steps=2",
        "trainer.val_every=2",
        "trainer.val_tasks=4",
        "trainer.meta_batch_size=2",
        "model.hidden_sizes=[8]",
        "inner_loop.eval_steps=1",
        *QUIET,
    )
    metrics = Trainer(cfg, tmp_path / "run").fit()
    assert metrics["metric"] == "accuracy" and 0 <= metrics["last"]["value"] <= 1
    saved = load_checkpoint(tmp_path / "run/checkpoints/last.pt")["config"]["model"]
    assert saved["in_features"] == 5 and saved["out_features"] == 2  # temperature, humidity, 3 mounts


def test_regression_preset_trains_evaluates_and_resumes_from_parquet(tmp_path):
    write(sensor_table(), tmp_path / "sensors.parquet")
    train = (
        "experiment=table_regression",
        "dataset.path=sensors.parquet",
        "dataset.task_column=sensor",
        "dataset.target_column=reading",
        "dataset.shots=3",
        "dataset.query=4",
        "trainer.val_every=2",
        "trainer.val_tasks=8",
        "trainer.ckpt_every=2",
        "trainer.meta_batch_size=4",
        "model.hidden_sizes=[16]",
        "inner_loop.eval_steps=2",
        *QUIET,
        "hydra.run.dir=run",
    )
    proc = run_cli("maml-train", *train, "trainer.max_steps=4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "table sensors.parquet: 192 rows, 12 tasks (8 train / 2 val / 2 test), 5 features, regression" in proc.stdout
    saved = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert saved["step"] == 4 and saved["config"]["model"]["in_features"] == 5

    proc = run_cli(
        "maml-eval", "checkpoint=run/checkpoints/best.pt", "eval.episodes=20", "hydra.run.dir=ev", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "ev/eval.json").read_text())
    assert result["metric"] == "mse" and result["episodes"] == 20 and result["shots"] == 3
    assert result["mean"] < result["pre_adaptation_mean"] * 10

    # A bad override is one line and leaves the run as it was.
    before = (tmp_path / "run/checkpoints/last.pt").read_bytes()
    proc = run_cli("maml-train", *train, "trainer.max_steps=6", "dataset.target_column=price", cwd=tmp_path)
    assert_one_line_error(proc, "dataset.target_column names 'price'", "its columns are 'sensor', 'temperature'")
    assert proc.returncode == 1 and (tmp_path / "run/checkpoints/last.pt").read_bytes() == before

    proc = run_cli("maml-train", *train, "trainer.max_steps=6", "trainer.resume=auto", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stdout and load_checkpoint(tmp_path / "run/checkpoints/last.pt")["step"] == 6


def test_molecules_preset_selects_by_roc_auc_evaluates_accuracy_and_resumes(tmp_path):
    write(molecule_table(invalid=2), tmp_path / "assays.csv")
    train = (
        "experiment=molecules_fsmol",
        "dataset.path=assays.csv",
        "dataset.task_column=assay",
        "dataset.smiles_column=smiles",
        "dataset.target_column=active",
        *MOLECULE_SPLITS,
        "dataset.shots=2",
        "dataset.query=2",
        "dataset.fingerprint_bits=256",
        "model.hidden_sizes=[32]",
        "trainer.val_every=2",
        "trainer.val_tasks=10",
        "trainer.ckpt_every=2",
        "trainer.meta_batch_size=4",
        "inner_loop.eval_steps=2",
        *QUIET,
        "hydra.run.dir=run",
    )
    proc = run_cli("maml-train", *train, "trainer.max_steps=4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 2 rows whose SMILES RDKit cannot read" in proc.stdout
    assert "4 train / 1 val / 1 test), 256 features, 2 classes" in proc.stdout
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["metric"] == "roc_auc" and metrics["higher_is_better"]

    # The checkpoint was selected by ROC-AUC; the same checkpoint scored by accuracy.
    proc = run_cli(
        "maml-eval",
        "checkpoint=run/checkpoints/best.pt",
        "eval.episodes=12",
        "dataset.metric=accuracy",
        "hydra.run.dir=ev",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "ev/eval.json").read_text())
    assert result["metric"] == "accuracy" and result["ways"] == 2 and result["shots"] == 2
    assert 0 <= result["mean"] <= 1 and "accuracy (%)" in proc.stdout

    proc = run_cli("maml-train", *train, "trainer.max_steps=6", "trainer.resume=auto", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["step"] == 6
