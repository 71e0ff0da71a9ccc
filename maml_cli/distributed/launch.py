"""Which process of a ``torchrun`` job this is, and what each rank does before Hydra starts.

``torchrun`` starts ``--nproc_per_node`` copies of ``maml-train`` on each of ``--nnodes`` nodes and
tells each its place through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). Every copy parses the same command line and
composes the same config. Rank 0 runs as a single process would. The other ranks (*followers*)
write nothing into the run: Hydra's dir of a follower is a private temp dir, removed when it exits
(so whatever ``hydra/job_logging`` a user picked writes its log there), without ``.hydra/``, and
rank 0's run dir comes over the process group
(:meth:`~maml_cli.distributed.world.ProcessGroupWorld.run_dir`): Hydra's ``${now:}`` differs per
process. Once the ranks have joined, a follower logs warnings and errors only.

Errors: a config error is the same on every rank, so rank 0 alone prints it and the followers exit
with the same status, silently (one line, not one per rank). An error of one rank after the ranks
have joined (its data missing on its node, its GPU out of memory) is printed by that rank, prefixed
with its rank; the others then fail in their next collective and say so (see
:class:`~maml_cli.distributed.world.DistributedError`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from maml_cli.errors import ConfigError, MamlError, NonFiniteLossError, TrainingInterrupted

#: The environment variables torchrun sets for every worker, read here.
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class Launch:
    """This process's place in the job: global ``rank`` of ``size``, ``local_rank`` of
    ``local_size`` on its node."""

    rank: int
    size: int
    local_rank: int
    local_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch() -> Launch | None:
    """The job ``torchrun`` started this process in, or None for a single process (no torchrun, or
    a world of one)."""
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        size, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_size = int(env.get("LOCAL_WORLD_SIZE", size))
    except ValueError:
        shown = ", ".join(f"{k}={env.get(k)!r}" for k in ENV if k in env)
        raise ConfigError(f"torchrun's environment is not integers ({shown}); start maml-train with torchrun") from None
    if size <= 1:
        return None
    if not 0 <= rank < size or not 0 <= local_rank < local_size:
        raise ConfigError(f"RANK={rank} / WORLD_SIZE={size} (LOCAL_RANK={local_rank}) do not fit together")
    return Launch(rank, size, local_rank, local_size)


def is_follower() -> bool:
    """True in a rank other than 0 of a torchrun job."""
    job = launch()
    return job is not None and not job.is_main


def before_hydra(argv: list[str]) -> list[str]:
    """The command line a rank hands to Hydra: as given for rank 0 and single processes; for a
    follower, without ``.hydra/`` (and without a resumed segment's record, which is rank 0's to
    write). ``--help`` and ``--cfg`` are printed by rank 0 alone; a multirun is refused (a torchrun
    job trains one run)."""
    from maml_cli.cli import run_start

    job = launch()
    if job is None:
        return argv
    if not run_start.runs_one_job(argv):
        mode = (run_start.argument(argv, "hydra.mode") or "").upper()
        if any(arg in ("-m", "--multirun") for arg in argv) or mode == "MULTIRUN":
            raise ConfigError(
                "maml-train under torchrun trains one run with all its ranks: drop -m/--multirun, or sweep "
                "with one torchrun job per run (e.g. hydra/launcher=submitit_slurm, see the README)"
            )
        if not job.is_main:
            sys.exit(0)  # --help / --cfg: rank 0 prints it
        return argv
    return argv if job.is_main else [*argv, "hydra.output_subdir=null"]


def follower_run_dir(argv: list[str]) -> list[str]:
    """A follower's Hydra dir: a private temp dir, removed at exit (the run's is rank 0's). Call it
    after :func:`maml_cli.cli.resume.prepare_argv`, which reads the run dir given on the command
    line (a resumed run's ``last.pt``) on every rank alike."""
    job = launch()
    if job is None or job.is_main:
        return argv
    private = tempfile.mkdtemp(prefix=f"maml-train-rank{job.rank}-")
    _private_dirs.append(private)
    atexit.register(remove_private_dir)
    return [*argv, f"hydra.run.dir={_quoted(private)}"]


_private_dirs: list[str] = []


def remove_private_dir() -> None:
    """Remove a follower's Hydra dir, once it knows rank 0's (a log file open in it keeps working
    on Linux), or at exit: a rank killed later leaves nothing behind."""
    while _private_dirs:
        shutil.rmtree(_private_dirs.pop(), ignore_errors=True)


def _quoted(path: str) -> str:
    return path if all(c.isalnum() or c in "/._-" for c in path) else "'" + path.replace("'", "\\'") + "'"


# -- errors ----------------------------------------------------------------------------------------


class RankStopped(MamlError):
    """A follower stops because rank 0 stopped first and reported why."""


class RankError(MamlError):
    """An error of one rank, its message prefixed with the rank."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


#: Errors every rank raises at the same point with the same message: rank 0 reports them.
_AGREED = (RankStopped, TrainingInterrupted, NonFiniteLossError)


def report_rank_errors(main: Callable[[], None]) -> Callable[[], None]:
    """Wrap a CLI's main so that a follower's errors follow the rules of the module docstring.
    Rank 0 and single processes run ``main`` as it is."""
    job = launch()
    if job is None or job.is_main:
        return main

    def follower_main() -> None:
        from maml_cli.distributed.world import joined_ranks

        try:
            main()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 (a ReportedError carries a MamlError past Hydra)
            error = getattr(exc, "error", exc)
            joined = joined_ranks()
            if isinstance(error, _AGREED) or (not joined and _same_on_every_rank(error)):
                sys.exit(getattr(error, "exit_code", 1))
            if isinstance(error, MamlError):
                raise RankError(f"rank {job.rank} of {job.size}: {error}", error.exit_code) from None
            raise

    return follower_main


def _same_on_every_rank(error: BaseException) -> bool:
    """Errors of the command line and the config files, raised before the ranks joined."""
    return isinstance(error, ConfigError) or type(error).__module__.startswith(("hydra", "omegaconf"))
