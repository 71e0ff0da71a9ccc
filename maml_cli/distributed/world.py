"""The trainer's view of the other processes: :class:`SingleProcess` (none) or :class:`ProcessGroupWorld`.

:class:`~maml_cli.engine.trainer.Trainer` calls the few methods below at fixed points of its loop;
a single process's are no-ops, so ``maml-train`` without torchrun computes what it always did.
Under torchrun, one meta-step is:

1. every rank draws the *whole* meta-batch from the same seeded task generator (sampling indexes
   a cached tensor: cheap) and keeps its slice of ``meta_batch_size / world_size`` tasks, so the
   tasks are those one process would draw, and every rank's task stream is in the checkpoint;
2. the algorithm's ``meta_backward`` on that slice leaves the mean meta-gradient of the slice in
   ``.grad``; equal shares make the mean over ranks of those means the mean over the meta-batch,
   for every algorithm (MAML, FOMAML, ANIL, Meta-SGD, MAML++, Reptile, iMAML: each writes the mean
   over its tasks of a per-task gradient);
3. one all-reduce sums, packed flat per dtype: the ``.grad`` of every trainable parameter, each
   rank's per-task losses placed at its tasks' positions (so every rank logs, and checks for NaN,
   the losses of the whole meta-batch), and the changes to buffers (:mod:`.buffers`). The
   ``.grad`` becomes the sum over ranks divided by the world size; the trainer then clips and
   steps as ever, on identical gradients on every rank.

The all-reduce is explicit rather than ``DistributedDataParallel``'s: DDP hooks the backward pass
of a module's forward, while these algorithms differentiate through functional calls (and Reptile
and iMAML write ``.grad`` without any backward), and DDP's all-reduce is not differentiable
(pytorch/pytorch#63929), which second-order MAML would need if it reduced inside the graph.

Validation shards the held-out tasks over the ranks and gathers the scores, so no rank idles
while another validates. Every rank calls every collective at the same step (checkpoints gather
every rank's random-number streams), and a collective that fails or outlasts
``trainer.distributed_timeout_s`` is one :class:`DistributedError` line, never a hang.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from maml_cli.distributed.buffers import BufferSync
from maml_cli.distributed.launch import Launch, RankStopped, launch, remove_private_dir
from maml_cli.engine.world import SingleProcess
from maml_cli.errors import ConfigError, MamlError

log = logging.getLogger("maml_cli")

#: ``trainer.distributed_timeout_s`` when a config (an older checkpoint's) has none.
DEFAULT_TIMEOUT_S = 600.0

_joined = False  # True once this process's ranks formed their process group


def joined_ranks() -> bool:
    """Whether this process has joined the other ranks (errors after that can be one rank's own)."""
    return _joined


class DistributedError(MamlError):
    """A collective failed or timed out: another rank died, or did not answer in time."""


class ProcessGroupWorld(SingleProcess):
    """``size`` processes joined in a ``torch.distributed`` process group; see the module docstring."""

    def __init__(self, job: Launch, device: torch.device, backend: str, timeout_s: float) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.job = job
        self.rank, self.size, self.is_main = job.rank, job.size, job.is_main
        self.device, self.backend, self.timeout_s = device, backend, timeout_s
        self._seed = 0
        self._buffers: tuple[nn.Module, BufferSync] | None = None  # the algorithm's, made at its first step

    # -- collectives -------------------------------------------------------------------------

    def _collective(self, what: str, call: Callable[..., Any], *args, **kwargs) -> Any:
        try:
            return call(*args, **kwargs)
        except RuntimeError as exc:  # torch.distributed.DistError and the backends' errors
            raise DistributedError(
                f"rank {self.rank} of {self.size} lost the other ranks in {what} ({_detail(exc)}): another rank "
                "stopped (its error is above) or did not answer within "
                f"trainer.distributed_timeout_s={self.timeout_s:g}"
            ) from None

    def _all_reduce(self, what: str, tensors: list[Tensor], op=None) -> list[Tensor]:
        """The sums over ranks (or ``op``) of ``tensors``: one flat all-reduce per dtype."""
        op = op or self.dist.ReduceOp.SUM
        out: list[Tensor] = [torch.empty(0)] * len(tensors)
        groups: dict[torch.dtype, list[int]] = defaultdict(list)
        for i, t in enumerate(tensors):
            groups[t.dtype].append(i)
        for dtype in sorted(groups, key=str):  # the same order on every rank
            index = groups[dtype]
            flat = torch.cat([tensors[i].detach().reshape(-1).to(self.device) for i in index])
            self._collective(what, self.dist.all_reduce, flat, op=op)
            for i, part in zip(index, flat.split([tensors[i].numel() for i in index])):
                out[i] = part.view(tensors[i].shape).to(tensors[i].device)
        return out

    def _broadcast_object(self, what: str, value: Any) -> Any:
        box = [value]
        self._collective(what, self.dist.broadcast_object_list, box, src=0)
        return box[0]

    # -- the hooks ---------------------------------------------------------------------------

    def place(self, device: torch.device) -> torch.device:
        return self.device

    @contextmanager
    def run_dir(self, path, lock) -> Iterator[Path]:
        """Rank 0 locks its run dir and sends its path; the others take it (and write nothing)."""
        with ExitStack() as stack:
            shared = None
            if self.is_main:
                try:
                    stack.enter_context(lock(path))
                    shared = str(Path(path).absolute())
                finally:  # on failure, None tells the others to stop: rank 0 reports why
                    self._broadcast_object("agreeing on the run dir", shared)
            else:
                shared = self._broadcast_object("agreeing on the run dir", None)
                remove_private_dir()
                if shared is None:
                    raise RankStopped("rank 0 could not start the run")
            yield Path(shared)

    def seed(self, seed: int) -> None:
        self._seed = seed
        if self.rank:
            _seed_globals(_rank_seed(seed, self.rank))

    def start(self, algorithm: nn.Module, step: int) -> None:
        if getattr(algorithm, "outer", None) == "trpo":
            # Each rank would search its own trust region on its share of the tasks; their mean is
            # not the TRPO step of the whole meta-batch. A plain gradient averages exactly.
            raise ConfigError(
                "inner_loop.outer=trpo does not run under torchrun (each rank's TRPO step would be its own); "
                "use inner_loop.outer=pg with optimizer=adam, or one process"
            )
        steps = [None] * self.size
        self._collective("comparing the ranks' start", self.dist.all_gather_object, steps, step)
        if len(set(steps)) > 1:
            raise DistributedError(
                f"the ranks start from different steps ({', '.join(f'rank {r}: {s}' for r, s in enumerate(steps))}): "
                "trainer.resume found different checkpoints; put the run dir on a file system every node shares"
            )
        model = getattr(algorithm, "model", algorithm)
        tensors = [t for t in (*algorithm.parameters(), *model.buffers()) if t.is_floating_point() or t.dtype.is_signed]
        groups: dict[torch.dtype, list[Tensor]] = defaultdict(list)
        for t in tensors:
            groups[t.dtype].append(t)
        with torch.no_grad():
            for dtype in sorted(groups, key=str):
                flat = torch.cat([t.detach().reshape(-1).to(self.device) for t in groups[dtype]])
                self._collective("sharing rank 0's weights", self.dist.broadcast, flat, src=0)
                for t, part in zip(groups[dtype], flat.split([t.numel() for t in groups[dtype]])):
                    t.copy_(part.view(t.shape))

    def meta_backward(self, algorithm, batch, step: int):
        total = batch.num_tasks
        if total % self.size:
            raise ConfigError(f"a meta-batch of {total} tasks does not divide by the {self.size} ranks")
        share = total // self.size
        if self._buffers is None or self._buffers[0] is not algorithm:
            # The model's buffers (batch-norm statistics); an algorithm's own, such as fp16's loss
            # scale, are each rank's bookkeeping.
            self._buffers = (algorithm, BufferSync(getattr(algorithm, "model", algorithm), self.rank, self.size))
        buffers = self._buffers[1]
        if buffers:
            buffers.snapshot()
        out = algorithm.meta_backward(batch.slice(self.rank * share, (self.rank + 1) * share), step=step)

        params = [p for p in algorithm.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        present = torch.tensor([float(p.grad is not None) for p in params], device=self.device)
        losses = [self._placed(t, share, total) for t in (out.loss_before, out.loss_after)]
        terms = buffers.contribute() if buffers else []
        sums = self._all_reduce("the all-reduce of the meta-gradients", [*grads, present, *losses, *terms])

        n = len(params)
        grad_sums, present, (before, after), term_sums = sums[:n], sums[n], sums[n + 1 : n + 3], sums[n + 3 :]
        for p, g, seen in zip(params, grad_sums, present.tolist()):
            if seen:  # None on every rank stays None, as for one process
                p.grad = g.div_(self.size)
        if buffers:
            try:
                buffers.apply(term_sums)
            except RuntimeError as exc:
                raise DistributedError(f"rank {self.rank} of {self.size}: {exc}") from None
        return dataclasses.replace(out, loss_before=before, loss_after=after)

    def _placed(self, values: Tensor, share: int, total: int) -> Tensor:
        """This rank's per-task ``values`` at its tasks' rows of a zero tensor of the whole batch."""
        values = values.detach()
        whole = torch.zeros((total, *values.shape[1:]), dtype=values.dtype, device=values.device)
        whole[self.rank * share : (self.rank + 1) * share] = values
        return whole

    def score_tasks(self, algorithm, tasks, split, num_tasks, steps, batch_size) -> Tensor:
        """Each batch of held-out tasks split into ``size`` nearly equal parts; the scores, in
        float64 (exact for float32), gathered in task order."""
        rows = []
        for batch in tasks.held_out(split, num_tasks, batch_size):
            total = batch.num_tasks
            per = -(-total // self.size)
            bounds = [(min(r * per, total), min((r + 1) * per, total)) for r in range(self.size)]
            start, stop = bounds[self.rank]
            mine = torch.zeros(steps + 1, per, dtype=torch.float64, device=self.device)
            if stop > start:
                scores = algorithm.evaluate(batch.slice(start, stop), tasks.metric, steps=steps)
                mine[:, : stop - start] = scores.reshape(steps + 1, stop - start).to(self.device, torch.float64)
            parts = [torch.empty_like(mine) for _ in range(self.size)]
            self._collective("gathering the validation scores", self.dist.all_gather, parts, mine)
            rows.append(torch.cat([part[:, : b - a] for part, (a, b) in zip(parts, bounds)], dim=1).cpu())
        return torch.cat(rows, dim=1)

    def any(self, flag: bool) -> bool:
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self._all_reduce("agreeing on the time budget", [value], self.dist.ReduceOp.MAX)[0].item())

    def agree_on_signal(self, signum: int | None) -> int | None:
        value = torch.tensor([float(signum or 0)], device=self.device)
        agreed = int(self._all_reduce("agreeing on a stop signal", [value], self.dist.ReduceOp.MAX)[0].item())
        return agreed or None

    @contextmanager
    def signals(self) -> Iterator[None]:
        """torchrun passes the signal it gets on to every worker, and a terminal's Ctrl-C or a
        scheduler's SIGTERM (SLURM signals every process of the job) reaches the workers directly
        too: each worker gets the same signal twice within milliseconds, and the trainer takes a
        second signal for "stop now, without saving". So a repeat of the same signal within
        :data:`REPEAT_WINDOW_S` is dropped; a later or a different one still stops at once."""
        wrapped = {}
        for sig in _STOP_SIGNALS:
            handler = signal.getsignal(sig)
            if callable(handler) and handler is not signal.default_int_handler:
                wrapped[sig] = handler
                signal.signal(sig, _once_per_window(handler))
        try:
            yield
        finally:
            for sig, handler in wrapped.items():
                signal.signal(sig, handler)

    def rng_state(self, states: dict[str, Any]) -> dict[str, Any]:
        every = [None] * self.size
        self._collective("gathering the ranks' random streams", self.dist.all_gather_object, every, states)
        return {"rng": every[0], "rank_rng": every}

    def restore_rng(self, state: dict[str, Any], task_generator: torch.Generator) -> None:
        from maml_cli.engine.rng import restore_rng_states

        ranks = state.get("rank_rng")
        if isinstance(ranks, list) and len(ranks) == self.size:
            restore_rng_states(ranks[self.rank], task_generator)
            return
        # Written by another number of processes: the task stream (shared) continues exactly;
        # the other ranks' own streams start afresh, from the seed and the step.
        restore_rng_states(state["rng"], task_generator)
        if self.rank:
            _seed_globals(_rank_seed(self._seed, self.rank, int(state.get("step", 0))))
        if self.is_main:
            written = len(ranks) if isinstance(ranks, list) else 1
            log.info(
                "the checkpoint was written by %d process(es), this job has %d: the task stream continues "
                "exactly, the ranks' own random streams (dropout) start afresh",
                written,
                self.size,
            )

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.size, "backend": self.backend}


# -- joining ---------------------------------------------------------------------------------------


@contextmanager
def joined(cfg) -> Iterator[SingleProcess]:
    """The world this process trains in: :class:`SingleProcess`, or under torchrun the process
    group of all ranks (gloo on CPU, nccl on GPU), left at the end. Checks first, on every rank
    alike, that the config fits the job (rank 0 reports a misfit, in one line)."""
    global _joined
    job = launch()
    if job is None:
        yield SingleProcess()
        return
    timeout_s, device = _check(cfg, job)
    backend = "nccl" if device.type == "cuda" else "gloo"
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(
            backend,
            timeout=timedelta(seconds=timeout_s),
            rank=job.rank,
            world_size=job.size,
            device_id=device if device.type == "cuda" else None,  # NCCL bound to this rank's GPU
        )
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(
            f"rank {job.rank} of {job.size} could not join the other ranks ({_detail(exc)}); start maml-train with "
            "torchrun, which sets MASTER_ADDR and MASTER_PORT"
        ) from None
    _joined = True
    if not job.is_main:  # rank 0 tells the run's story
        log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
    if job.is_main:
        log.info(
            "data-parallel: %d ranks (%s on %s), %d tasks each per meta-step; collectives time out after %gs",
            job.size,
            backend,
            device.type,
            int(cfg.trainer.meta_batch_size) // job.size,
            timeout_s,
        )
    try:
        yield ProcessGroupWorld(job, device, backend, timeout_s)
    finally:
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 (a group broken by a dead rank: the process is ending anyway)
            pass


def _check(cfg, job: Launch) -> tuple[float, torch.device]:
    """``trainer.distributed_timeout_s`` and this rank's device; a config that does not fit the
    job is a :class:`ConfigError`."""
    from maml_cli.engine.device import resolve_device

    trainer = cfg.trainer
    batch = int(trainer.meta_batch_size)
    if batch % job.size:
        up = math.ceil(batch / job.size) * job.size
        raise ConfigError(
            f"trainer.meta_batch_size={batch} does not divide by the {job.size} ranks of this torchrun job: each "
            f"rank adapts an equal share of the meta-batch; use a multiple of {job.size} (e.g. "
            f"trainer.meta_batch_size={up}) or another number of processes"
        )
    timeout = trainer.get("distributed_timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0 or math.isinf(timeout):
        raise ConfigError(f"trainer.distributed_timeout_s must be a number of seconds > 0, got {timeout!r}")
    device = resolve_device(str(trainer.device))
    if device.type == "cuda":
        if device.index is not None and job.local_size > 1:
            raise ConfigError(
                f"trainer.device={trainer.device} would put all {job.local_size} ranks of a node on one GPU; use "
                "trainer.device=cuda (or auto): each rank takes the GPU of its LOCAL_RANK"
            )
        if device.index is None:
            device = torch.device("cuda", job.local_rank % torch.cuda.device_count())
    return float(timeout), device


def _detail(exc: BaseException) -> str:
    """The gist of a backend's error: its first sentence, without gloo's source-file prefix."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", text)
    return re.split(r"\.\s+(?=[A-Z])", text, maxsplit=1)[0].rstrip(".")[:160]


# -- random streams and signals --------------------------------------------------------------------


def _rank_seed(*parts: object) -> int:
    digest = hashlib.blake2b("/".join(map(str, ("rank", *parts))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _seed_globals(seed: int) -> None:
    from maml_cli.engine.rng import seed_everything

    seed_everything(seed)


#: The signals the trainer may turn into a stop; only those it handles (a Python handler) are wrapped.
_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2") if hasattr(signal, name)
)
#: Seconds within which a repeat of the same signal is the launcher's copy of it.
REPEAT_WINDOW_S = 2.0


def _once_per_window(handler):
    last: dict[int, float] = {}

    def handle(signum, frame):
        now = time.monotonic()
        if now - last.get(signum, -math.inf) < REPEAT_WINDOW_S:
            return
        last[signum] = now
        handler(signum, frame)

    return handle
