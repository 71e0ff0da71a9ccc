"""Omniglot on the real data (MAML_DATA_ROOT, set by .ci/run), plus its layouts on small copies.

Under CI the real data must be there: these tests fail rather than skip without it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from maml_cli.data import omniglot
from maml_cli.data.omniglot import locate, omniglot_tasks
from maml_cli.errors import MamlError

from .helpers import real_data_root, run_cli


def data_root() -> Path:
    return real_data_root("Omniglot", locate)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A fresh cache per test session, so the first-use decode runs every time too."""
    return tmp_path_factory.mktemp("omniglot-cache")


@pytest.fixture(scope="module")
def tasks(cache_dir):
    return omniglot_tasks(root=str(data_root()), cache_dir=str(cache_dir))


def test_decodes_all_of_omniglot_once_into_a_uint8_cache(tasks, cache_dir, monkeypatch):
    assert tasks.images.dtype == torch.uint8 and tasks.images.shape == (32460, 1, 28, 28)
    assert len(tasks.class_names) == 1623
    assert (cache_dir / "omniglot_28px.pt").is_file()
    # Strokes are bright on a dark background after inversion.
    assert tasks.images.float().mean() < 0.2 * 255

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(omniglot, "decode", must_not_decode)
    again = omniglot_tasks(root=str(data_root()), cache_dir=str(cache_dir))
    assert torch.equal(again.images, tasks.images)


def test_maml_split_has_1200_and_423_characters_with_rotations(tasks):
    sizes = {split: entry[0].shape[0] for split, entry in tasks._tables.items()}
    assert sizes == {"train": 1100 * 4, "val": 100 * 4, "test": 423 * 4}
    assert tasks._tables["train"][1].min() == 20  # every class has its 20 drawings


def test_vinyals_split_from_the_lists(cache_dir):
    root = data_root()
    split_dir = root / "omniglot" / "splits" / "vinyals"
    vinyals = omniglot_tasks(root=str(root), cache_dir=str(cache_dir), split="vinyals", split_dir=str(split_dir))
    sizes = {split: entry[0].shape[0] for split, entry in vinyals._tables.items()}
    assert sizes == {"train": 4112, "val": 688, "test": 1692}


def test_episodes_have_the_protocols_shape_labels_and_rotations(tasks):
    batch = tasks.sample(6, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (6, 5, 1, 28, 28) and batch.query_x.shape == (6, 75, 1, 28, 28)
    assert batch.support_y.tolist()[0] == [0, 1, 2, 3, 4]
    assert batch.query_y[0].bincount().tolist() == [15] * 5
    assert 0.0 <= batch.support_x.min() and batch.support_x.max() <= 1.0
    # A class turned by 90 degrees shows its character turned by 90 degrees.
    table, _, rotations = tasks._tables["train"]
    turned = int((rotations == 1).nonzero()[0])
    index = table[turned, :2].reshape(1, 1, 2)
    upright = tasks._materialize(index, torch.tensor([[0]]), 1, 1).support_x[0, 0]
    rotated = tasks._materialize(index, torch.tensor([[1]]), 1, 1).support_x[0, 0]
    assert torch.equal(rotated, torch.rot90(upright, 1, dims=(-2, -1)))


def test_held_out_episodes_are_fixed(tasks):
    a = next(tasks.held_out("test", 8, 8))
    b = list(tasks.held_out("test", 8, 3))
    assert torch.equal(torch.cat([p.query_x for p in b]), a.query_x)


def test_train_and_eval_on_real_omniglot(tmp_path, cache_dir):
    root = data_root()
    env = {"MAML_DATA_ROOT": str(root), "MAML_CACHE_DIR": str(cache_dir)}
    proc = run_cli(
        "maml-train",
        "experiment=omniglot_5w1s",
        "model.hidden=16",
        "trainer.max_steps=4",
        "trainer.meta_batch_size=2",
        "trainer.val_every=2",
        "trainer.val_tasks=10",
        "trainer.ckpt_every=2",
        "trainer.progress=false",
        "hydra.run.dir=run",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["metric"] == "accuracy" and metrics["higher_is_better"] is True
    assert metrics["task_batching"] == "loop" and 0.0 <= metrics["last"]["value"] <= 1.0
    proc = run_cli(
        "maml-eval",
        f"checkpoint={tmp_path / 'run/checkpoints/best.pt'}",
        "eval.episodes=30",
        "dataset.eval_query=5",
        "hydra.run.dir=ev",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "ev/eval.json").read_text())
    assert result["metric"] == "accuracy" and result["episodes"] == 30 and result["steps"] == 3
    assert result["ways"] == 5 and result["shots"] == 1 and result["query"] == 5
    assert 0.0 <= result["pre_adaptation_mean"] <= 1.0 and 0.0 <= result["mean"] <= 1.0
    assert "accuracy (%)" in proc.stdout


def _copy_two_characters(source: Path, target: Path, extracted: bool) -> None:
    """A tiny Omniglot in the same layout: the first two characters of each part."""
    for part in omniglot.PARTS:
        with zipfile.ZipFile(source / f"{part}.zip") as archive:
            names = [n for n in sorted(archive.namelist()) if n.endswith(".png")][:40]
            if extracted:
                for name in names:
                    (target / name).parent.mkdir(parents=True, exist_ok=True)
                    (target / name).write_bytes(archive.read(name))
            else:
                target.mkdir(parents=True, exist_ok=True)
                with zipfile.ZipFile(target / f"{part}.zip", "w") as small:
                    for name in names:
                        small.writestr(name, archive.read(name))


@pytest.mark.parametrize("layout", ["zips", "extracted", "torchvision"])
def test_every_layout_is_found_and_reads_the_same_drawings(tmp_path, layout):
    source = locate(data_root())
    folder = {"zips": tmp_path / "omniglot", "extracted": tmp_path, "torchvision": tmp_path / "omniglot-py"}[layout]
    _copy_two_characters(source, folder, extracted=layout != "zips")
    assert locate(tmp_path) == folder
    drawings = list(omniglot._pngs(folder, "images_background"))
    assert len(drawings) == 40 and drawings[0][0] == drawings[19][0] != drawings[20][0]
    with pytest.raises(MamlError, match="incomplete: 4 characters and 80 images, expected 1623"):
        omniglot_tasks(root=str(tmp_path), cache_dir=str(tmp_path / "cache"))


def test_missing_omniglot_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(MamlError, match=r"Omniglot not found \(looked in .*dataset.download=true"):
        omniglot_tasks(root=str(tmp_path), cache_dir=str(tmp_path / "cache"))


def test_missing_omniglot_from_the_cli_is_one_line(tmp_path):
    proc = run_cli(
        "maml-train", "dataset=omniglot", "model=conv4", f"dataset.root={tmp_path}", "hydra.run.dir=r", cwd=tmp_path
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Omniglot not found")
