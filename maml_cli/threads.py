"""How many CPU threads torch uses, and how its idle threads wait.

torch parallelises each operation over an OpenMP thread pool. By default a thread that runs out of
work spins for a while before it sleeps, so that the next operation starts without a wake-up. On a
machine of its own that is free; next to another busy process, the spinning threads take the
cores the other process (or torch's own other threads) needs, and everybody slows down: on a
2-core machine a sinusoid meta-step went from 2.9 ms alone to 7.3 ms next to one identical run,
and parallel multirun jobs made each other 10-50x slower. Two settings fix that:

- the number of threads (``trainer.num_threads`` / ``eval.num_threads``): for small models the
  work per operation is too little to share (one thread is as fast, or faster, even alone), and
  for convolutions the default is chosen by measurement (``scripts/bench_busy_machine.py``);
- the wait policy: a short spin (:data:`SPIN_COUNT` iterations) before a thread sleeps, set in
  the environment before torch loads OpenMP, unless the user set ``OMP_WAIT_POLICY`` or
  ``GOMP_SPINCOUNT`` already.

This module imports torch only inside :func:`configure_threads`, so that :func:`set_wait_policy`
can run before torch is loaded.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

#: GNU OpenMP's spin before sleeping, in iterations (its default: 300,000).
SPIN_COUNT = 10_000


def set_wait_policy() -> None:
    """Shorten OpenMP's spin-wait for this process, unless the user chose a policy. Must run before
    torch is imported (OpenMP reads the environment once, when it is loaded)."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, as taskset or a scheduler sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(model: nn.Module) -> int:
    """The thread count when none is given: one for models without convolutions (a small MLP's
    operations are too small to share), every available core for convolutional models."""
    from torch import nn

    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return available_cores() if has_conv else 1


def configure_threads(num_threads: int | None, model: nn.Module) -> int:
    """Set torch's intra-op thread count (``None``: :func:`default_threads`); returns it."""
    import torch

    threads = default_threads(model) if num_threads is None else int(num_threads)
    torch.set_num_threads(threads)
    return threads
