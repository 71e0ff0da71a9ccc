"""What the integrity check costs on load: the Omniglot cache (25 MB) and a Conv-4 checkpoint.

Each round loads the file with ``torch.load`` (what loading cost before the check), then times the
check on what it loaded (xxh3-128 over the loaded structure, as ``ImageCache.load`` and
``load_checkpoint`` do it), and for comparison ``zipfile.testzip`` (the zip CRC-32s) and SHA-256 of
the file's bytes. Printed: the medians over ``--repeats`` rounds, and the median of each round's
check time as a share of that round's load (robust when other processes slow the machine). The
checkpoint comes from a real one-step ``maml-train experiment=omniglot_5w1s`` run (needs the
Omniglot data: ``MAML_DATA_ROOT``); the cache is the real one when it exists, else one of the same
size with random pixels.

    python scripts/bench_integrity.py [--repeats 21]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
from toolkit import provenance

from maml_cli.data.images import ImageCache, default_cache_dir
from maml_cli.storage import split_integrity

BIN = Path(sys.executable).parent


def omniglot_cache(folder: Path) -> Path:
    """A verified Omniglot cache in ``folder``: the real images if the user's cache has them."""
    real = default_cache_dir() / "omniglot_28px.pt"
    if real.is_file():
        state = torch.load(real, map_location="cpu", weights_only=True)
        state, _ = split_integrity(state)
        images, labels, names = state["images"], state["labels"], state["class_names"]
        print(f"cache: the real {real} ({tuple(images.shape)} images)")
    else:
        images = torch.randint(0, 256, (32460, 1, 28, 28), dtype=torch.uint8)
        labels, names = torch.arange(32460) // 20, [f"c{i}" for i in range(1623)]
        print("cache: none found; one of the same size (32460 x 1 x 28 x 28) with random pixels")
    path = folder / "omniglot_28px.pt"
    ImageCache(images, labels, list(names)).save(path)
    return path


def conv4_checkpoint(folder: Path) -> Path:
    """last.pt of a one-step Conv-4 Omniglot 5-way 1-shot run (model, Adam state, rng, config)."""
    subprocess.run(
        [
            str(BIN / "maml-train"),
            "experiment=omniglot_5w1s",
            "trainer.max_steps=1",
            "trainer.val_tasks=4",
            "trainer.val_every=1",
            "trainer.progress=false",
            "trainer.figures=false",
            f"hydra.run.dir={folder / 'run'}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return folder / "run" / "checkpoints" / "last.pt"


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return 1e3 * (time.perf_counter() - start)


def measure(name: str, path: Path, repeats: int, seed: int | str | None) -> None:
    checks = {
        "check: xxh3-128 of the loaded data": lambda loaded: split_integrity(loaded)[1] or sys.exit("does not verify"),
        "zipfile.testzip (zip CRC-32)": lambda loaded: zipfile.ZipFile(path).testzip(),
        "SHA-256 of the file": lambda loaded: hashlib.sha256(path.read_bytes()).digest(),
    }
    loads: list[float] = []
    times: dict[str, list[float]] = {label: [] for label in checks}
    shares: dict[str, list[float]] = {label: [] for label in checks}
    for _ in range(repeats):
        start = time.perf_counter()
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        loads.append(1e3 * (time.perf_counter() - start))
        for label, check in checks.items():  # right after the load, as ImageCache.load / load_checkpoint
            times[label].append(timed(lambda check=check, loaded=loaded: check(loaded)))
            shares[label].append(100 * times[label][-1] / loads[-1])
    print(f"\n{name}: {path.stat().st_size / 2**20:.2f} MB, median of {repeats} rounds")
    print(f"  {provenance(seed, torch.get_num_threads())}")
    print(f"  {'torch.load':<40}{statistics.median(loads):8.2f} ms")
    for label in checks:
        median, share = statistics.median(times[label]), statistics.median(shares[label])
        print(f"  {label:<40}{median:8.2f} ms  {share:5.1f}% of the same round's torch.load")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        measure("Omniglot cache", omniglot_cache(folder), args.repeats, "none (real or unseeded random pixels)")
        try:
            checkpoint = conv4_checkpoint(folder)
        except subprocess.CalledProcessError:
            print("\nConv-4 checkpoint: maml-train failed (is MAML_DATA_ROOT set to the Omniglot data?)")
            return
        measure("Conv-4 checkpoint (Omniglot 5-way 1-shot, Adam)", checkpoint, args.repeats, 0)  # maml-train's seed


if __name__ == "__main__":
    main()
