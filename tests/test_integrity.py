"""Files the toolkit trusts are verified, written whole or not at all, and never left as litter.

Damage is made the way it happens (bytes overwritten in the middle of a real file), and each such
test first shows that a plain ``torch.load`` takes the damaged file without a word, so the check
is what catches it. Full disks are real small file systems where the machine lets a test mount
one, and a write that fails as the kernel fails it otherwise.
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from maml_cli import storage
from maml_cli.data.images import ImageCache
from maml_cli.engine.checkpoint import (
    load_checkpoint,
    remove_interrupted_checkpoint_writes,
    save_checkpoint,
    write_json,
)
from maml_cli.errors import CheckpointError, MamlError

from .helpers import TINY, run_cli
from .test_cli import assert_one_line_error

QUIET = ("trainer.progress=false", "trainer.figures=false")
NO_SPACE = "No space left on device"


def overwrite(path: Path, data: bytes) -> None:
    """Overwrite ``data`` in the middle of the largest tensor stored in ``path`` (a zip member)."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as handle:
        handle.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(handle.read(2), "little"), int.from_bytes(handle.read(2), "little")
        start = info.header_offset + 30 + name_len + extra_len
        handle.seek(start + (info.file_size - len(data)) // 2)
        handle.write(data)


def _same(a, b) -> bool:
    """Equal all the way down, tensors by value."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def state(step=3, **changes):
    model = {"w": torch.linspace(-1, 1, 4096), "b": torch.zeros(8)}
    return {"format_version": 2, "step": step, "model": model, "config": {"seed": 0}, "top": [], **changes}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real tiny run with best.pt, last.pt and two top-k checkpoints."""
    root = tmp_path_factory.mktemp("run")
    proc = run_cli("maml-train", *TINY, *QUIET, "trainer.keep_top_k=2", "hydra.run.dir=run", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "run"


@pytest.fixture
def copy_of(run, tmp_path):
    """A fresh copy of the run's checkpoints/ for a test to damage."""

    def make() -> Path:
        ckpt = tmp_path / "run" / "checkpoints"
        (ckpt / "top").mkdir(parents=True)
        for path in (run / "checkpoints").rglob("*"):
            if path.is_file():
                (ckpt / path.relative_to(run / "checkpoints")).write_bytes(path.read_bytes())
        return ckpt

    return make


# -- 1. integrity: damaged checkpoints -------------------------------------------------------------


def test_64_bytes_of_ff_in_a_checkpoint_are_caught_and_best_pt_is_named_instead(run, copy_of):
    ckpt = copy_of()
    overwrite(ckpt / "last.pt", b"\xff" * 64)
    raw = torch.load(ckpt / "last.pt", weights_only=True)  # what happened before: silently loaded
    pristine = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert raw["step"] == 6 and not _same(raw, pristine)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(ckpt / "last.pt")
    message = str(caught.value)
    assert f"checkpoint {ckpt / 'last.pt'} is damaged" in message
    assert message.endswith(f"use {ckpt / 'best.pt'} instead")
    assert "\n" not in message


def test_a_damaged_best_pt_names_last_pt_and_with_both_damaged_a_top_k_member(copy_of):
    ckpt = copy_of()
    overwrite(ckpt / "best.pt", b"\x00" * 64)
    with pytest.raises(CheckpointError, match=f"use {ckpt / 'last.pt'} instead"):
        load_checkpoint(ckpt / "best.pt")
    overwrite(ckpt / "last.pt", b"\x00" * 64)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(ckpt / "best.pt")
    assert "/top/step_0000000" in str(caught.value) and str(caught.value).endswith(".pt instead")
    for member in (ckpt / "top").glob("step_*.pt"):
        overwrite(member, b"\x00" * 64)
    with pytest.raises(CheckpointError, match="no other checkpoint of its run verifies"):
        load_checkpoint(ckpt / "top" / "step_00000006.pt")


def test_maml_eval_on_a_damaged_checkpoint_is_one_line_naming_it_and_the_stand_in(copy_of, tmp_path):
    ckpt = copy_of()
    overwrite(ckpt / "best.pt", b"\xff" * 64)
    proc = run_cli("maml-eval", f"checkpoint={ckpt / 'best.pt'}", "hydra.run.dir=e", cwd=tmp_path)
    assert proc.returncode == 1
    assert_one_line_error(proc, f"{ckpt / 'best.pt'} is damaged", f"use {ckpt / 'last.pt'} instead")
    assert "inner_loop.lr" not in proc.stderr


def test_a_checkpoint_from_before_integrity_records_loads_unverified(tmp_path):
    torch.save(state(format_version=1), tmp_path / "old.pt")  # format 1: no record
    assert load_checkpoint(tmp_path / "old.pt")["step"] == 3
    torch.save(state(format_version=2), tmp_path / "stripped.pt")  # format 2 must carry one
    with pytest.raises(CheckpointError, match="is damaged"):
        load_checkpoint(tmp_path / "stripped.pt")


def test_a_damaged_integrity_record_or_value_is_damage(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(state(), path)
    assert load_checkpoint(path)["step"] == 3
    raw = torch.load(path, weights_only=True)
    for bad in (raw | {"step": 4}, raw | {"integrity": {"algorithm": "xxh3_128", "digest": "0" * 32}}):
        torch.save(bad, path)
        with pytest.raises(CheckpointError, match="is damaged"):
            load_checkpoint(path)


def test_non_finite_weights_are_reported_as_such(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    weights = torch.linspace(-1, 1, 4096)
    weights[7] = float("nan")
    save_checkpoint(state(model={"net.0.weight": torch.ones(3), "net.2.weight": weights}), path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(f"checkpoint {path} holds NaN/inf weights in net.2.weight (")
    assert "lr" not in str(caught.value)


def test_maml_eval_names_non_finite_weights_instead_of_blaming_the_learning_rate(run, tmp_path):
    good = load_checkpoint(run / "checkpoints" / "last.pt")
    name = next(iter(good["model"]))
    path = tmp_path / "nan.pt"
    save_checkpoint(good | {"model": good["model"] | {name: torch.full_like(good["model"][name], float("inf"))}}, path)
    proc = run_cli("maml-eval", f"checkpoint={path}", "hydra.run.dir=e", cwd=tmp_path)
    assert proc.returncode == 1
    assert_one_line_error(proc, f"checkpoint {path} holds NaN/inf weights in {name}")
    assert "inner_loop.lr" not in proc.stderr


# -- 4. malformed checkpoints of any shape --------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"step": "7"}, "its 'step' is str '7', not an integer"),
        ({"step": True}, "its 'step' is bool 'True', not an integer"),
        ({"step": -1}, "its step is -1"),
        ({"model": torch.zeros(3)}, "its 'model' is a tensor, not a dict"),
        ({"config": [1, 2]}, "its 'config' is list '[1, 2]', not a dict"),
        ({"format_version": "2"}, "its 'format_version' is str '2', not an integer"),
        ({"model": {"w": [1.0, 2.0]}}, "model entry 'w' is list '[1.0, 2.0]', not a tensor"),
        ({"optimizer": [1]}, "its 'optimizer' is list '[1]', not a dict"),
        ({"best": 0.5}, "its 'best' is float '0.5', not a dict or null"),
        ({"history": {"a": 1}}, "its 'history' is dict"),
        ({"config": {1: "x"}}, "its config has keys that are not strings"),
    ],
)
def test_malformed_fields_are_one_line_naming_the_file_and_the_field(tmp_path, changes, fragment):
    path = tmp_path / "m.pt"
    save_checkpoint(state(**changes), path)  # verifies: the damage is in what was written
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(f"checkpoint {path} is malformed: ") and fragment in str(caught.value)


@pytest.mark.parametrize("missing", ["step", "model", "config", "format_version"])
def test_missing_keys_are_named(tmp_path, missing):
    path = tmp_path / "m.pt"
    save_checkpoint({k: v for k, v in state().items() if k != missing}, path)
    with pytest.raises(CheckpointError, match=f"{path} is not a maml-cli checkpoint \\(it lacks {missing}\\)"):
        load_checkpoint(path)


def test_not_a_dict_at_all(tmp_path):
    path = tmp_path / "t.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="is not a maml-cli checkpoint"):
        load_checkpoint(path)


def test_maml_train_resume_from_a_malformed_checkpoint_is_one_line(run, tmp_path):
    good = load_checkpoint(run / "checkpoints" / "last.pt")
    path = tmp_path / "bad.pt"
    save_checkpoint(good | {"step": "six"}, path)
    proc = run_cli("maml-train", *TINY, *QUIET, f"trainer.resume={path}", "hydra.run.dir=r", cwd=tmp_path)
    assert proc.returncode == 1
    assert_one_line_error(proc, f"checkpoint {path} is malformed: its 'step' is str 'six', not an integer")


# -- 1. integrity: damaged caches -----------------------------------------------------------------


def omniglot_sized_cache(seed=0) -> ImageCache:
    """As large as the Omniglot cache (32,460 images of 28x28, 25 MB), random pixels."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (32460, 1, 28, 28), generator=g, dtype=torch.uint8)
    return ImageCache(images, torch.arange(32460) // 20, [f"c{i}" for i in range(1623)])


def test_8_mb_overwritten_in_the_cache_is_rebuilt_with_a_warning_naming_it(tmp_path, caplog):
    cache = omniglot_sized_cache()
    path = tmp_path / "cache" / "omniglot_28px.pt"
    builds = []

    def build():
        builds.append(1)
        return cache

    ImageCache.load_or_build(path, build)
    overwrite(path, os.urandom(8 * 2**20))
    damaged = torch.load(path, weights_only=True)["images"]  # what happened before: silently loaded
    assert int((damaged != cache.images).flatten(1).any(1).sum()) > 10_000
    with caplog.at_level(logging.WARNING, logger="maml_cli"):
        again = ImageCache.load_or_build(path, build)
    assert len(builds) == 2 and torch.equal(again.images, cache.images)
    assert any(
        f"image cache {path} is damaged" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records
    )
    assert torch.equal(ImageCache.load(path).images, cache.images)  # the rebuilt file verifies


def test_a_cache_without_an_integrity_record_is_rebuilt(tmp_path):
    cache = omniglot_sized_cache()
    path = tmp_path / "c.pt"
    torch.save({"format": 1, "images": cache.images, "labels": cache.labels, "class_names": cache.class_names}, path)
    assert ImageCache.load(path) is None
    torch.save({"format": 2, "images": cache.images, "labels": cache.labels, "class_names": cache.class_names}, path)
    assert ImageCache.load(path) is None


# -- 4. a full disk, a read-only or unwritable dir: one line, old file intact, no temporary -------


def _fill_up_after(limit: int, monkeypatch) -> None:
    """Make every file ``os.fdopen`` opens fail as a full disk does once ``limit`` bytes are in."""
    real = os.fdopen

    class FullDisk(io.FileIO):
        written = 0

        def write(self, data):
            if FullDisk.written + len(data) > limit:
                raise OSError(errno.ENOSPC, NO_SPACE)
            FullDisk.written += len(data)
            return super().write(data)

    def fdopen(fd, mode="r", *args, **kwargs):
        if "w" not in mode:
            return real(fd, mode, *args, **kwargs)
        return io.BufferedWriter(FullDisk(fd, "w"), buffer_size=4096)

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize(
    ("write", "name", "hint"),
    [
        (lambda p: save_checkpoint(state(step=4), p), "last.pt", "free some space or choose another hydra.run.dir"),
        (lambda p: write_json({"x": list(range(9000))}, p), "metrics.json", "choose another hydra.run.dir"),
        (lambda p: omniglot_sized_cache(1).save(p), "omniglot_28px.pt", "choose another dataset.cache_dir"),
    ],
)
def test_a_full_disk_mid_write_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, write, name, hint):
    path = tmp_path / name
    path.write_bytes(b"the previous, good file")
    _fill_up_after(10_000, monkeypatch)
    with pytest.raises(MamlError) as caught:
        write(path)
    assert str(caught.value).startswith(f"cannot write {path}: {NO_SPACE}; ") and hint in str(caught.value)
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert "\n" not in str(caught.value)
    assert path.read_bytes() == b"the previous, good file"
    assert os.listdir(tmp_path) == [name]  # the temporary file is gone


@pytest.mark.parametrize(
    ("where", "exc"),
    [
        ("tempfile.mkstemp", PermissionError(errno.EACCES, "Permission denied")),
        ("os.replace", PermissionError(errno.EACCES, "Permission denied")),
        ("os.fsync", OSError(errno.EROFS, "Read-only file system")),
        ("os.fsync", OSError(errno.ENOSPC, NO_SPACE)),  # delayed allocation: the disk fills at fsync
    ],
)
def test_unwritable_places_are_one_line_naming_the_file(tmp_path, monkeypatch, where, exc):
    path = tmp_path / "checkpoints" / "best.pt"
    save_checkpoint(state(), path)
    module, attribute = where.split(".")

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(sys.modules[module], attribute, fail)
    with pytest.raises(MamlError) as caught:
        save_checkpoint(state(step=9), path)
    monkeypatch.undo()
    assert str(caught.value).startswith(f"cannot write {path}: {exc.strerror}; ")
    if exc.errno == errno.EACCES:
        assert f"make {path.parent} writable or choose another hydra.run.dir" in str(caught.value)
    assert load_checkpoint(path)["step"] == 3
    assert os.listdir(path.parent) == ["best.pt"]


def _mount_tmpfs(path: Path, size: str, *options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    flags = ",".join([f"size={size}", *options])
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", flags, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({done.stderr.decode().strip()[:80]})")


@pytest.fixture
def small_fs(tmp_path):
    mounts = []

    def mount(path: Path, size: str, *options: str) -> Path:
        _mount_tmpfs(path, size, *options)
        mounts.append(path)
        return path

    yield mount
    for path in reversed(mounts):
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_really_full_disk_during_a_checkpoint_write(tmp_path, small_fs):
    disk = small_fs(tmp_path / "disk", "64k")
    save_checkpoint(state(), disk / "last.pt")  # about 17 KB
    with open(disk / "filler", "wb") as filler:  # leave about 8 KB
        while os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize > 8192:
            filler.write(b"x" * 4096)
            filler.flush()
    with pytest.raises(MamlError) as caught:
        save_checkpoint(state(step=4), disk / "last.pt")
    assert str(caught.value).startswith(f"cannot write {disk / 'last.pt'}: {NO_SPACE}; free some space or ")
    assert load_checkpoint(disk / "last.pt")["step"] == 3
    assert sorted(os.listdir(disk)) == ["filler", "last.pt"]


def test_maml_train_on_a_full_disk_is_one_line_and_keeps_its_checkpoint(tmp_path, small_fs):
    """checkpoints/ on a 64 KB file system: best.pt of step 3 fits, last.pt of step 3 does not."""
    ckpt = small_fs(tmp_path / "run" / "checkpoints", "64k")
    proc = run_cli("maml-train", *TINY, *QUIET, "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 1
    line = assert_one_line_error(proc, f"cannot write {ckpt}/", f".pt: {NO_SPACE}; free some space or choose another")
    assert "enforce fail" not in proc.stderr and "Error executing job" not in proc.stderr
    assert load_checkpoint(ckpt / "best.pt")["step"] == 3, line
    assert not [name for name in os.listdir(ckpt) if name.endswith(".tmp")]


def test_a_read_only_cache_dir_is_one_line(tmp_path, small_fs):
    cache_dir = small_fs(tmp_path / "ro", "1m", "ro")
    with pytest.raises(MamlError) as caught:
        ImageCache.load_or_build(cache_dir / "c.pt", lambda: omniglot_sized_cache())
    assert str(caught.value) == (
        f"cannot write {cache_dir / 'c.pt'}: Read-only file system; choose another dataset.cache_dir "
        "(or set MAML_CACHE_DIR)"
    )


# -- 5. what an interrupted write leaves is removed at the next start, and only that ---------------

_SLOW_WRITER = """
import sys, time
from maml_cli.storage import atomic_write
def write(handle):
    handle.write(b"x" * 1000)
    handle.flush()
    print("writing", flush=True)
    time.sleep(float(sys.argv[2]))
    handle.write(b"y")
atomic_write(sys.argv[1], write, "choose another place")
print("done", flush=True)
"""


def _start_slow_writer(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_kill_9_mid_write_leaves_a_temporary_the_next_start_removes(tmp_path):
    ckpt = tmp_path / "checkpoints"
    save_checkpoint(state(), ckpt / "last.pt")
    writer = _start_slow_writer(ckpt / "last.pt", 60)
    writer.kill()
    writer.wait()
    (litter,) = [p for p in ckpt.iterdir() if p.name != "last.pt"]
    assert litter.name.startswith(".last.pt.") and litter.name.endswith(".tmp")
    assert remove_interrupted_checkpoint_writes(tmp_path) == [litter]
    assert os.listdir(ckpt) == ["last.pt"] and load_checkpoint(ckpt / "last.pt")["step"] == 3


def test_a_live_writers_temporary_is_left_alone_and_its_write_completes(tmp_path):
    target = tmp_path / "cache" / "omniglot_28px.pt"
    writer = _start_slow_writer(target, 2)
    (in_progress,) = target.parent.iterdir()
    assert storage.remove_interrupted_writes(target.parent) == []
    assert in_progress.exists()
    out, _ = writer.communicate(timeout=30)
    assert writer.returncode == 0 and out.strip() == "done"
    assert target.read_bytes() == b"x" * 1000 + b"y" and os.listdir(target.parent) == [target.name]


def test_only_our_temporaries_are_removed_and_nothing_is_created(tmp_path):
    run = tmp_path / "run"
    assert remove_interrupted_checkpoint_writes(run) == [] and not run.exists()
    top = run / "checkpoints" / "top"
    top.mkdir(parents=True)
    ours = [
        run / ".metrics.json.k2j4_9ab.tmp",
        run / "checkpoints" / ".best.pt.abcdefgh.tmp",
        top / ".step_00000003.pt.0a1b2c3d.tmp",
        top / ".index.json.zz_zz_zz.tmp",
    ]
    theirs = [run / "notes.tmp", run / "checkpoints" / "last.pt", top / "step_00000003.pt", top / ".x.tmp"]
    for path in ours + theirs:
        path.write_bytes(b"?")
    assert not list(top.glob("*.pt"))[0].name.startswith(".")  # a glob never picks up a temporary
    assert sorted(remove_interrupted_checkpoint_writes(run)) == sorted(ours)
    assert all(path.exists() for path in theirs)


def test_the_cache_dir_is_cleaned_when_a_cache_is_used(tmp_path):
    cache = omniglot_sized_cache()
    path = tmp_path / "omniglot_28px.pt"
    ImageCache.load_or_build(path, lambda: cache)
    litter = tmp_path / ".omniglot_28px.pt.q1w2e3r4.tmp"
    litter.write_bytes(b"x" * 1000)
    held = tmp_path / ".cifar_fs_32px.pt.a1b2c3d4.tmp"  # a live writer's, in another process
    held.write_bytes(b"x")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,sys,time; f=open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(30)",
            str(held),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        ImageCache.load_or_build(path, lambda: pytest.fail("the cache should load"))
        assert not litter.exists() and held.exists()
    finally:
        holder.kill()
        holder.wait()
    storage.remove_interrupted_writes(tmp_path)
    assert not held.exists()


def test_flock_on_a_temporary_is_exclusive_across_open_files(tmp_path):
    """The premise of the cleanup: a writer's lock keeps a second open of the same file out."""
    path = tmp_path / ".x.pt.abcdefgh.tmp"
    path.write_bytes(b"")
    with open(path, "rb") as writer, open(path, "rb") as cleaner:
        fcntl.flock(writer, fcntl.LOCK_EX)
        with pytest.raises(BlockingIOError):
            fcntl.flock(cleaner, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_run_removes_what_a_killed_writer_left_in_its_run_dir(tmp_path):
    from .helpers import TINY, run_cli

    leftovers = [
        tmp_path / "run/checkpoints/.last.pt.abcd1234.tmp",
        tmp_path / "run/checkpoints/top/.best.pt.x1y2z3w4.tmp",
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a checkpoint")
    proc = run_cli(
        "maml-train", *TINY, "trainer.max_steps=1", "trainer.progress=false", "hydra.run.dir=run", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert not any(path.exists() for path in leftovers)
    assert (tmp_path / "run/checkpoints/last.pt").is_file()
    assert "left by an interrupted write" in (tmp_path / "run/train.log").read_text()
