"""The image datasets, each on a tiny copy in its real on-disk layout (see ``fixtures_images``):
finding the data, building and reusing the cache, splits, episodes, pixel values, errors, configs."""

from __future__ import annotations

import io
import os
import pickle
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra.utils import instantiate
from PIL import Image

from maml_cli.config import config_dir
from maml_cli.config.datasets import DATASET_SCHEMAS
from maml_cli.data import image_files
from maml_cli.data.cifar import cifar_fs_tasks, fc100_tasks
from maml_cli.data.cub import cub_tasks
from maml_cli.data.image_files import CIFAR100_STATS, IMAGENET_STATS, load_pickle, standardisation
from maml_cli.data.image_folder import image_folder_tasks, ratio_split
from maml_cli.data.images import ImageCache
from maml_cli.data.miniimagenet import miniimagenet_tasks
from maml_cli.data.tieredimagenet import tieredimagenet_tasks
from maml_cli.errors import ConfigError, MamlError

from . import fixtures_images as fx
from .helpers import compose_train

SMALL = {"ways": 5, "shots": 1, "query": 3, "image_size": 8}
SPLITS = ("train", "val", "test")


def check_tasks(tasks, codes, stats, tol=0, ways=5, shots=1, query=3, channels=3, size=8):
    """Episodes of every split: shapes, dtypes, label layout, and (from the pixels) that each label
    is one class of the right split, that every class of the split turns up, and no image twice."""
    assert tasks.input_shape == (channels, size, size)
    batches = {"train": [tasks.sample(40, torch.Generator().manual_seed(0))]}
    batches.update({split: list(tasks.held_out(split, 30, 16)) for split in ("val", "test")})
    assert [b.support_x.shape[0] for b in batches["val"]] == [16, 14]
    for split, split_batches in batches.items():
        seen = set()
        for batch in split_batches:
            tasks_in_batch = batch.support_x.shape[0]
            for x, y, per in ((batch.support_x, batch.support_y, shots), (batch.query_x, batch.query_y, query)):
                assert x.dtype == torch.float32 and y.dtype == torch.int64
                assert x.shape == (tasks_in_batch, ways * per, channels, size, size)
                assert torch.equal(y, torch.arange(ways).repeat_interleave(per).expand(tasks_in_batch, -1))
            support_code, support_image = fx.codes_of(batch.support_x, *stats, tol)
            query_code, query_image = fx.codes_of(batch.query_x, *stats, tol)
            code = torch.cat([support_code.reshape(-1, ways, shots), query_code.reshape(-1, ways, query)], -1)
            image = torch.cat([support_image.reshape(-1, ways, shots), query_image.reshape(-1, ways, query)], -1)
            assert (code == code[..., :1]).all(), "a label's images come from two classes"
            for task_code, task_image in zip(code[..., 0], image):
                assert len(set(task_code.tolist())) == ways
                assert all(len(set(row.tolist())) == shots + query for row in task_image), "an image twice"
            seen |= set(code.flatten().tolist())
        assert seen == set(codes[split]), f"{split} split has the wrong classes"


def assert_reuses_cache(build, cache_dir: Path, monkeypatch):
    """A second build loads the cache: nothing is decoded, unpickled or written again."""
    first = build()
    (cache_file,) = cache_dir.glob("*.pt")
    stamp = cache_file.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("decoded again instead of loading the cache")

    monkeypatch.setattr(ImageCache, "save", fail)
    monkeypatch.setattr(image_files, "_decode_file", fail)
    monkeypatch.setattr(image_files, "load_pickle", fail)
    second = build()
    monkeypatch.undo()
    assert cache_file.stat().st_mtime_ns == stamp
    assert torch.equal(first.images, second.images)
    return first, cache_file


# -- miniImageNet --------------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True])
def test_miniimagenet_folder_with_split_csvs(tmp_path, monkeypatch, nested):
    codes = fx.miniimagenet_folder(tmp_path / "data", nested=nested)
    cache = tmp_path / "cache"

    tasks, cache_file = assert_reuses_cache(
        lambda: miniimagenet_tasks(root=str(tmp_path / "data"), cache_dir=str(cache), **SMALL), cache, monkeypatch
    )
    assert cache_file.name.startswith("miniimagenet_") and cache_file.name.endswith("_8px_3ch.pt")
    assert tasks.class_names[:2] == ["train/n00000000", "train/n00000001"]
    check_tasks(tasks, codes, IMAGENET_STATS, tol=2)


def test_miniimagenet_pickles(tmp_path, monkeypatch):
    codes = fx.miniimagenet_pickles(tmp_path / "data")
    cache = tmp_path / "cache"
    options = {**SMALL, "image_size": 84}

    tasks, cache_file = assert_reuses_cache(
        lambda: miniimagenet_tasks(root=str(tmp_path / "data"), cache_dir=str(cache), **options), cache, monkeypatch
    )
    assert cache_file.name == "miniimagenet_pickles_84px_3ch.pt"
    check_tasks(tasks, codes, IMAGENET_STATS, size=84)  # pickled pixels come back exactly


def test_miniimagenet_pickles_resized_to_grayscale(tmp_path):
    fx.miniimagenet_pickles(tmp_path / "data", size=12, protocol=2)
    tasks = miniimagenet_tasks(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "c"), **SMALL, channels=1)
    batch = tasks.sample(2, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (2, 5, 1, 8, 8)
    mean, std = standardisation(IMAGENET_STATS, 1)
    gray = (batch.support_x * std[0] + mean[0]) * 255
    flat = gray.flatten(-3)
    assert float((flat.amax(-1) - flat.amin(-1)).max()) < 1e-3
    colours = {fx.colour(c, i) for c in range(16) for i in range(fx.IMAGES_PER_CLASS)}
    luma = {round((299 * r + 587 * g + 114 * b) / 1000) for r, g, b in colours}  # PIL's RGB -> L
    assert {round(v) for v in flat[..., 0].flatten().tolist()} <= luma


def test_miniimagenet_split_dir_changes_the_cache(tmp_path):
    root = tmp_path / "data"
    fx.miniimagenet_folder(root)
    other = tmp_path / "lists"
    other.mkdir()
    for split in SPLITS:  # the same lists but the first two val and test classes swapped over
        (other / f"{split}.csv").write_text((root / "miniimagenet/splits/ravi" / f"{split}.csv").read_text())
    val, test = (other / "val.csv").read_text(), (other / "test.csv").read_text()
    (other / "val.csv").write_text(test)
    (other / "test.csv").write_text(val)
    cache = tmp_path / "cache"
    miniimagenet_tasks(root=str(root), cache_dir=str(cache), **SMALL)
    tasks = miniimagenet_tasks(root=str(root), cache_dir=str(cache), split_dir=str(other), **SMALL)
    assert len(list(cache.glob("*.pt"))) == 2
    check_tasks(tasks, {"train": range(6), "val": range(11, 16), "test": range(6, 11)}, IMAGENET_STATS, tol=2)


def test_miniimagenet_missing_and_incomplete(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(MamlError, match=r"miniImageNet not found \(looked in .*miniimagenet/images.*pkl"):
        miniimagenet_tasks(root=str(root), cache_dir=str(tmp_path / "c"))
    fx.miniimagenet_folder(root)
    (root / "miniimagenet/images/n0000000300000002.jpg").unlink()
    with pytest.raises(MamlError, match=r"incomplete: 1 of the 64 images .* \(e\.g\. n0000000300000002\.jpg\)"):
        miniimagenet_tasks(root=str(root), cache_dir=str(tmp_path / "c"), **SMALL)
    assert not list(tmp_path.glob("c/*.pt")), "no cache of incomplete data"
    with pytest.raises(MamlError, match=r"split list .*nowhere/train\.csv not found; set dataset\.split_dir"):
        miniimagenet_tasks(root=str(root), cache_dir=str(tmp_path / "c"), split_dir=str(tmp_path / "nowhere"))


def test_miniimagenet_pickle_that_is_not_a_cache(tmp_path):
    base = tmp_path / "miniimagenet"
    fx.miniimagenet_pickles(tmp_path)
    with open(base / "mini-imagenet-cache-val.pkl", "wb") as file:
        pickle.dump({"images": np.zeros((2, 84, 84, 3), np.uint8)}, file)
    with pytest.raises(MamlError, match="is not a miniImageNet pickle: expected a dict with keys image_data, class"):
        miniimagenet_tasks(root=str(tmp_path), cache_dir=str(tmp_path / "c"), **SMALL)


# -- safe unpickling -----------------------------------------------------------------------------


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_restricted_unpickler_refuses_code_and_loads_arrays(tmp_path, protocol):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"image_data": _RunsACommand(marker)}, protocol=protocol))
    with pytest.raises(MamlError, match=r"refusing to load .*evil\.pkl: it references (posix|nt|os)\.system"):
        load_pickle(evil)
    assert not marker.exists()

    data = {"a": np.arange(12, dtype=np.uint8).reshape(3, 4), "b": [np.int64(3), "x", b"y"], "c": np.float32(1)}
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = load_pickle(good)
    assert np.array_equal(loaded["a"], data["a"]) and loaded["a"].dtype == np.uint8
    assert loaded["b"] == data["b"] and loaded["c"] == data["c"]


def test_restricted_unpickler_refuses_other_classes_and_damage(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"when": __import__("datetime").date(2020, 1, 1)}))
    with pytest.raises(MamlError, match=r"it references datetime\.date"):
        load_pickle(path)
    path.write_bytes(pickle.dumps({"a": np.zeros(100)})[:50])
    with pytest.raises(MamlError, match=r"cannot read .*x\.pkl .*damaged"):
        load_pickle(path)


# -- tieredImageNet ------------------------------------------------------------------------------


def test_tieredimagenet_folder(tmp_path, monkeypatch):
    codes = fx.tieredimagenet(tmp_path / "data")
    monkeypatch.setenv("MAML_DATA_ROOT", str(tmp_path / "data"))  # root and cache_dir from the env
    monkeypatch.setenv("MAML_CACHE_DIR", str(tmp_path / "cache"))

    tasks, cache_file = assert_reuses_cache(lambda: tieredimagenet_tasks(**SMALL), tmp_path / "cache", monkeypatch)
    assert cache_file.name == "tieredimagenet_8px_3ch.pt"
    assert "val/n00000006" in tasks.class_names
    check_tasks(tasks, codes, IMAGENET_STATS)


def test_tieredimagenet_missing(tmp_path):
    (tmp_path / "tieredimagenet" / "train").mkdir(parents=True)
    with pytest.raises(MamlError, match=r"tieredImageNet not found \(looked in .*tieredimagenet/train, .*/val"):
        tieredimagenet_tasks(root=str(tmp_path), cache_dir=str(tmp_path / "c"))


# -- CIFAR-FS and FC100 --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["cifar_fs", "fc100"])
def test_cifar_variants_share_one_cache(tmp_path, monkeypatch, variant):
    codes = fx.cifar100(tmp_path / "data")[variant]
    build = {"cifar_fs": cifar_fs_tasks, "fc100": fc100_tasks}[variant]
    options = {**SMALL, "image_size": 32, "query": 5}  # 6 images a class: train and test pooled

    tasks, cache_file = assert_reuses_cache(
        lambda: build(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), **options),
        tmp_path / "cache",
        monkeypatch,
    )
    assert cache_file.name == "cifar100_32px_3ch.pt"
    assert tasks.images.shape == (20 * 6, 3, 32, 32)
    assert tasks.class_names[:2] == ["aquatic_mammals/beaver", "aquatic_mammals/dolphin"]
    check_tasks(tasks, codes, CIFAR100_STATS, query=5, size=32)


def test_cifar_missing_data_lists_and_torchvision(tmp_path, monkeypatch):
    with pytest.raises(MamlError, match=r"CIFAR-100 not found \(looked in .*cifar-100-python.*download=true"):
        cifar_fs_tasks(root=str(tmp_path), cache_dir=str(tmp_path / "c"))
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(MamlError, match="download=true needs torchvision"):
        fc100_tasks(root=str(tmp_path), cache_dir=str(tmp_path / "c"), download=True)
    fx.cifar100(tmp_path)
    with pytest.raises(MamlError, match=r"FC100 split list .*nope/train\.json not found"):
        fc100_tasks(root=str(tmp_path), cache_dir=str(tmp_path / "c"), split_dir=str(tmp_path / "nope"))


# -- CUB -----------------------------------------------------------------------------------------


def test_cub(tmp_path, monkeypatch):
    codes = fx.cub(tmp_path / "data")

    tasks, cache_file = assert_reuses_cache(
        lambda: cub_tasks(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), **SMALL),
        tmp_path / "cache",
        monkeypatch,
    )
    assert cache_file.name == "cub_8px_3ch.pt"
    assert tasks.class_names[0] == "001.Bird_0"
    check_tasks(tasks, codes, IMAGENET_STATS, tol=2)


def test_cub_missing_and_incomplete(tmp_path):
    with pytest.raises(MamlError, match=r"CUB-200-2011 not found \(looked in .*cub/CUB_200_2011/images.*tgz"):
        cub_tasks(root=str(tmp_path), cache_dir=str(tmp_path / "c"))
    fx.cub(tmp_path)
    for image in (tmp_path / "cub/CUB_200_2011/images" / fx.cub_folder(7)).iterdir():
        image.unlink()
    with pytest.raises(MamlError, match=r"incomplete: 1 classes of the split lists have no images .*008\.Bird_7"):
        cub_tasks(root=str(tmp_path), cache_dir=str(tmp_path / "c"), **SMALL)


# -- image_folder --------------------------------------------------------------------------------


def test_image_folder_with_class_lists(tmp_path, monkeypatch):
    names = fx.image_folder(tmp_path / "mine")
    lists = {"train_classes": names[:4], "val_classes": names[4:8], "test_classes": names[8:]}
    options = {**SMALL, "ways": 3, "query": 3}

    tasks, cache_file = assert_reuses_cache(
        lambda: image_folder_tasks(path=str(tmp_path / "mine"), cache_dir=str(tmp_path / "cache"), **lists, **options),
        tmp_path / "cache",
        monkeypatch,
    )
    assert cache_file.name.startswith("image_folder_") and cache_file.name.endswith("_8px_3ch.pt")
    assert tasks.class_names == names  # the empty folder, the text and the hidden file are skipped
    codes = {"train": range(4), "val": range(4, 8), "test": range(8, 12)}
    check_tasks(tasks, codes, IMAGENET_STATS, tol=2, ways=3)


def test_ratio_split_is_seeded_and_complete():
    names = [f"c{i}" for i in range(12)]
    splits = ratio_split(names, [0.5, 0.25, 0.25], split_seed=3)
    assert [len(splits[s]) for s in SPLITS] == [6, 3, 3]
    assert sorted(sum(splits.values(), [])) == sorted(names)
    assert splits == ratio_split(names, [0.5, 0.25, 0.25], split_seed=3)
    assert splits != ratio_split(names, [0.5, 0.25, 0.25], split_seed=4)
    assert [len(v) for v in ratio_split(names, [64, 16, 20], 0).values()] == [8, 2, 2]


def test_image_folder_grayscale_and_new_images(tmp_path):
    names = fx.image_folder(tmp_path / "mine")
    options = {"path": str(tmp_path / "mine"), "cache_dir": str(tmp_path / "cache"), **SMALL, "ways": 3}
    tasks = image_folder_tasks(split_ratios=[0.5, 0.25, 0.25], channels=1, **options)
    assert tasks.input_shape == (1, 8, 8)
    x = tasks.sample(2, torch.Generator().manual_seed(0)).support_x
    assert x.shape == (2, 3, 1, 8, 8)
    mean, std = standardisation(IMAGENET_STATS, 1)
    flat = ((x * std[0] + mean[0]) * 255).flatten(-3)
    assert float((flat.amax(-1) - flat.amin(-1)).max()) <= 2

    fx.write_image(tmp_path / "mine" / names[0] / "4.png", fx.colour(0, 4))  # a new image: a new cache
    image_folder_tasks(split_ratios=[0.5, 0.25, 0.25], channels=1, **options)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_image_folder_split_dir(tmp_path):
    names = fx.image_folder(tmp_path / "mine")
    lists = tmp_path / "lists"
    lists.mkdir()
    for split, part in zip(SPLITS, (names[8:], names[:4], names[4:8])):
        (lists / f"{split}.txt").write_text("# my split\n" + "\n".join(part) + "\n\n")
    tasks = image_folder_tasks(
        path=str(tmp_path / "mine"), split_dir=str(lists), cache_dir=str(tmp_path / "c"), **{**SMALL, "ways": 3}
    )
    check_tasks(tasks, {"train": range(8, 12), "val": range(4), "test": range(4, 8)}, IMAGENET_STATS, tol=2, ways=3)


def test_image_folder_errors(tmp_path):
    with pytest.raises(ConfigError, match="dataset.path is not set.*dataset=image_folder dataset.path="):
        image_folder_tasks()
    with pytest.raises(MamlError, match=r"image folder .*nowhere not found"):
        image_folder_tasks(path=str(tmp_path / "nowhere"))
    (tmp_path / "flat").mkdir()
    fx.write_image(tmp_path / "flat" / "a.png", (1, 2, 3))
    with pytest.raises(MamlError, match=r"no class folders with images in .*flat"):
        image_folder_tasks(path=str(tmp_path / "flat"))
    names = fx.image_folder(tmp_path / "mine")
    path = str(tmp_path / "mine")
    with pytest.raises(ConfigError, match=r"dataset\.val_classes, dataset\.test_classes must be set too"):
        image_folder_tasks(path=path, train_classes=names[:4])
    with pytest.raises(MamlError, match=r"the val split names 'cat', which is not a folder of images"):
        image_folder_tasks(path=path, train_classes=names[:4], val_classes=["cat"], test_classes=names[4:])
    with pytest.raises(ConfigError, match=r"split_ratios must be three fractions"):
        image_folder_tasks(path=path, split_ratios=[0.5, 0.5])
    with pytest.raises(ConfigError, match=r"leave the val split of the 12 classes empty"):
        image_folder_tasks(path=path, split_ratios=[0.9, 0.0, 0.1])
    with pytest.raises(ConfigError, match=r"dataset\.channels must be 1 \(grayscale\) or 3 \(RGB\), got 2"):
        image_folder_tasks(path=path, channels=2)
    broken = tmp_path / "mine" / names[0] / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(MamlError, match=r"cannot decode image .*broken\.png"):
        image_folder_tasks(path=path, cache_dir=str(tmp_path / "c"), **SMALL)


# -- decoding and resizing: the tensor paths against PIL, image by image ---------------------------


def _pil_resized(array: np.ndarray, size: int, mode: str) -> np.ndarray:
    image = Image.fromarray(array).convert(mode).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image).reshape(size, size, -1).transpose(2, 0, 1)


@pytest.mark.parametrize("size, channels", [(84, 3), (20, 3), (20, 1), (48, 1)])
def test_arrays_are_resized_as_pil_resizes_them(size, channels):
    """hwc_to_chw (tensor ops over many images) is PIL's bilinear resize and grey within 2 levels,
    enlarging (as CIFAR to 84) and shrinking (antialiased), with chunks smaller than the batch."""
    array = np.random.default_rng(size).integers(0, 256, (5, 32, 40, 3), dtype=np.uint8)
    array[:, :16] = array[:, :16] // 64 * 64  # flat areas and hard edges, not only noise
    got = image_files.hwc_to_chw(array, size, channels, chunk=2).numpy().astype(int)
    want = np.stack([_pil_resized(a, size, "L" if channels == 1 else "RGB") for a in array]).astype(int)
    assert got.shape == want.shape == (5, channels, size, size)
    assert np.abs(got - want).max() <= 2 and np.abs(got - want).mean() < 0.25
    grey = image_files.to_channels(torch.from_numpy(array).permute(0, 3, 1, 2), 1)[:, 0].numpy()
    assert np.array_equal(grey, np.stack([np.asarray(Image.fromarray(a).convert("L")) for a in array]))  # exactly


def test_omniglot_drawings_decode_as_pil_decodes_them():
    """torchvision.io gives the 1-bit Omniglot PNGs PIL's pixels exactly; resized to 28, within 1."""
    from torchvision.io import ImageReadMode, decode_png

    from maml_cli.data import omniglot

    root = os.environ.get("MAML_DATA_ROOT")
    folder = omniglot.locate(Path(root)) if root else None
    if folder is None:
        pytest.skip("the real Omniglot is not under MAML_DATA_ROOT")
    drawings = [data for _, (_, data) in zip(range(60), omniglot._pngs(folder, "images_evaluation"))]
    decoded = torch.stack(
        [decode_png(torch.frombuffer(bytearray(d), dtype=torch.uint8), ImageReadMode.GRAY) for d in drawings]
    )
    for data, pixels in zip(drawings, decoded):
        with Image.open(io.BytesIO(data)) as image:
            assert image.mode == "1" and np.array_equal(pixels[0].numpy(), np.asarray(image.convert("L")))
    want = np.stack([_pil_resized(pixels[0].numpy(), 28, "L") for pixels in decoded]).astype(int)
    got = image_files.resize(decoded, 28).numpy().astype(int)
    assert np.abs(got - want).max() <= 1 and (got != want).mean() < 0.001


# -- configs -------------------------------------------------------------------------------------

CONFIGS = {
    # name: (fixture, overrides beyond root and cache_dir, default image size)
    "miniimagenet": (fx.miniimagenet_folder, [], 84),
    "tieredimagenet": (fx.tieredimagenet, [], 84),
    "cifar_fs": (fx.cifar100, [], 32),
    "fc100": (fx.cifar100, [], 32),
    "cub": (fx.cub, [], 84),
    "image_folder": (fx.image_folder, ["dataset.split_ratios=[0.5,0.25,0.25]", "dataset.ways=3"], 84),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_dataset_config_composes_and_builds(tmp_path, name):
    fixture, overrides, size = CONFIGS[name]
    data = tmp_path / "data"
    fixture(data)
    where = f"dataset.path={data}" if name == "image_folder" else f"dataset.root={data}"
    cfg = compose_train(
        f"dataset={name}", where, f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.query=3", *overrides
    )
    assert cfg.dataset.image_size == size and cfg.dataset.channels == 3
    tasks = instantiate(cfg.dataset, seed=0, device="cpu")
    assert tasks.input_shape == (3, size, size)
    batch = tasks.sample(2, torch.Generator().manual_seed(0))
    assert batch.query_x.shape == (2, cfg.dataset.ways * 3, 3, size, size)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_dataset_yaml_lists_every_key_of_its_schema(name):
    text = yaml.safe_load((config_dir() / "dataset" / f"{name}.yaml").read_text())
    schema = DATASET_SCHEMAS[text["defaults"][0]]
    assert set(text) - {"defaults"} == {f.name for f in fields(schema)} - {"_target_"}


def _shared_data() -> Path | None:
    repo = Path(__file__).resolve().parents[1]
    env = os.environ.get("MAML_DATA_ROOT")
    places = [Path(env)] if env else []
    places += [repo / "shared" / "data", repo.parent / "shared" / "data"]
    return next((p for p in places if (p / "miniimagenet").is_dir()), None)


@pytest.mark.skipif(_shared_data() is None, reason="the project's shared split lists are not here")
def test_the_shipped_split_lists_read_as_the_benchmarks():
    from maml_cli.data.cifar import _split_names
    from maml_cli.data.cub import read_splits
    from maml_cli.data.miniimagenet import read_split_csv

    shared = _shared_data()
    ravi = {split: read_split_csv(shared / "miniimagenet/splits/ravi" / f"{split}.csv") for split in SPLITS}
    assert [len({synset for _, synset in rows}) for rows in ravi.values()] == [64, 16, 20]
    assert [len(rows) for rows in ravi.values()] == [38400, 9600, 12000]
    cub_splits = read_splits(shared / "cub/splits")
    assert [len(set(names)) for names in cub_splits.values()] == [100, 50, 50]
    assert len(set().union(*cub_splits.values())) == 200
    pairs = image_files.read_json_list
    names = [f"{c}/{f}" for s in SPLITS for c, f in pairs(shared / "cifar100/splits/cifar-fs" / f"{s}.json")]
    assert len(set(names)) == 100
    cifar_fs = _split_names("CIFAR-FS", shared / "cifar100/splits/cifar-fs", names)
    fc100 = _split_names("FC100", shared / "cifar100/splits/fc100", names)
    assert [len(v) for v in cifar_fs.values()] == [64, 16, 20]
    assert [len(v) for v in fc100.values()] == [60, 20, 20]
    assert len(set().union(*map(set, fc100.values()))) == 100
