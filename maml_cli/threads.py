"""How many CPU threads torch uses, and how its idle threads wait.

torch parallelises each operation over an OpenMP thread pool. By default a thread that runs out of
work spins for a while before it sleeps, so that the next operation starts without a wake-up. On a
machine of its own that is free; next to another busy process, the spinning threads take the
cores the other process (or torch's own other threads) needs, and everybody slows down: on a
2-core machine a sinusoid meta-step went from 2.9 ms alone to 7.3 ms next to one identical run,
and parallel multirun jobs made each other 10-50x slower. Two settings fix that:

- the number of threads (``trainer.num_threads`` / ``eval.num_threads``): for small models the
  work per operation is too little to share (one thread is as fast, or faster, even alone); for
  convolutions, unless a number is given, a :class:`ThreadGovernor` uses the cores that other
  processes leave free (measured with ``scripts/bench_busy_machine.py``);
- the wait policy: a short spin (:data:`SPIN_COUNT` iterations) before a thread sleeps, set in
  the environment before torch loads OpenMP, unless the user set ``OMP_WAIT_POLICY`` or
  ``GOMP_SPINCOUNT`` already.

This module imports torch only inside :func:`configure_threads`, so that :func:`set_wait_policy`
can run before torch is loaded.
"""

from __future__ import annotations

import os
import time
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


def _machine_busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have used since boot (``/proc/stat``), or None
    where there is no such file."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_busy_seconds() -> float:
    times = os.times()
    return times.user + times.system


class ThreadGovernor:
    """Gives torch as many threads as there are cores that other processes leave idle.

    A convolutional step on a 2-core machine runs 1.75x faster on two threads than on one when the
    machine is idle, but next to one other busy process two threads make it 3.4x slower than alone
    (their barriers wait for a core the other process holds), while one thread loses nothing
    (measured with ``scripts/bench_busy_machine.py``). So every ``interval`` seconds the governor
    measures the CPU time that the rest of the machine used (all processes, from ``/proc/stat``,
    less this process's own) and sets the thread count to the cores it left free, at least one.
    Two governed runs side by side settle on one thread each; when one ends, the other takes both
    cores back within an interval.
    """

    def __init__(self, cores: int | None = None, interval: float = 5.0) -> None:
        self.cores = cores or available_cores()
        self.interval = interval
        self._last = self._sample()
        self.threads = self.cores

    @staticmethod
    def _sample() -> tuple[float, float | None, float]:
        return time.perf_counter(), _machine_busy_seconds(), _own_busy_seconds()

    def others_busy(self) -> float | None:
        """Cores the other processes kept busy since the last sample (None: cannot tell)."""
        now = self._sample()
        (t0, machine0, own0), (t1, machine1, own1) = self._last, now
        self._last = now
        if machine0 is None or machine1 is None or t1 - t0 <= 0:
            return None
        return max(0.0, (machine1 - machine0) - (own1 - own0)) / (t1 - t0)

    def adjust(self) -> int:
        """Re-measure and set torch's thread count; returns it."""
        import torch

        others = self.others_busy()
        if others is not None:
            # A core counts as taken when other processes used more than half of it.
            self.threads = max(1, min(self.cores, self.cores - int(others + 0.5)))
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return self.threads

    def maybe_adjust(self) -> int:
        """:meth:`adjust` when ``interval`` seconds have passed since the last sample."""
        if time.perf_counter() - self._last[0] >= self.interval:
            return self.adjust()
        return self.threads


def default_threads(model: nn.Module) -> int | None:
    """The thread count when none is given: one for models without convolutions (a small MLP's
    operations are too small to share: one thread is as fast alone and does not slow down next to
    other processes), ``None`` for convolutional models: a :class:`ThreadGovernor` decides."""
    from maml_cli.models.layers import has_convolutions

    return None if has_convolutions(model) else 1


def configure_threads(num_threads: int | None, model: nn.Module, settle: float = 0.25) -> ThreadGovernor | None:
    """Set torch's intra-op thread count: ``num_threads`` if given, else :func:`default_threads`.

    Returns the :class:`ThreadGovernor` when the count is left to one (the caller calls its
    ``maybe_adjust`` as work goes on), after a first measurement over ``settle`` seconds.
    """
    import torch

    threads = default_threads(model) if num_threads is None else int(num_threads)
    if threads is not None:
        torch.set_num_threads(threads)
        return None
    governor = ThreadGovernor()
    time.sleep(settle)
    governor.adjust()
    return governor
