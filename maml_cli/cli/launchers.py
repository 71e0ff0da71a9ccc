"""Cluster jobs that survive their time limit: maml-cli's side of ``hydra/launcher=submitit_*``.

hydra-submitit-launcher runs each job of a multirun as a submitit job (a SLURM job, or a local
process). Before a job's time is up, or when it is preempted, the scheduler sends it SIGUSR2
(``signal_delay_s`` before the end); submitit's handler for it calls the launcher's
``checkpoint()``, which resubmits the same job, and requeues it. Left to itself that loses the
work since the last periodic ``last.pt`` and, when the requeued job starts, starts it from step 0.
And a job that raises a :class:`~maml_cli.cli.common.ReportedError` (a ``BaseException``, e.g. the
trainer's :class:`~maml_cli.errors.TrainingInterrupted`) escapes submitit's ``except Exception``
without leaving a result, so the main process ends with submitit's ``UncompletedJobError``
traceback. :class:`RequeueingLauncher`, mixed into the plugin's launchers by
``hydra_plugins/maml_cli_submitit``, changes three things:

* every job gets ``trainer.resume=auto`` (unless the command line sets ``trainer.resume``): a
  requeued job runs the same overrides in the same job dir, so it continues from its ``last.pt``;
  a first run finds none and starts at step 0;
* the trainer turns SIGUSR2 into a flag, like SIGTERM, finishes its meta-step and saves
  ``last.pt``; then (the trainer has put submitit's handler back) that handler is called, which
  checkpoints and requeues: save first, requeue second;
* a job that fails ends as a failed ``JobReturn`` carrying its one-line error, and a job that
  leaves no result (killed at its time limit, out of memory) as a failed job with one line, so
  the multirun ends with ``error: ...`` after every job has finished.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from maml_cli.cli.common import ReportedError
from maml_cli.errors import MamlError, TrainingInterrupted

log = logging.getLogger("maml_cli")


def with_resume(overrides: Sequence[str]) -> list[str]:
    """``overrides`` plus ``trainer.resume=auto`` unless they set ``trainer.resume`` themselves."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    return list(overrides) if "trainer.resume" in keys else [*overrides, "trainer.resume=auto"]


def _preemption_signal() -> int:
    """The signal submitit jobs get before their end (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise)."""
    from submitit.core.job_environment import JobEnvironment

    return int(JobEnvironment._usr_sig())


class JobFailed(MamlError):
    """A job's one-line error on its way to the main process, with the job's exit status.

    submitit pickles what a job returns, and an exception unpickles by calling its class with its
    ``args``: :class:`TrainingInterrupted` needs a second argument, so it would fail there.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _failed(overrides: Sequence[str], error: MamlError) -> JobReturn:
    """A job's failure as Hydra's sweepers expect it: reading ``return_value`` raises the error."""
    ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
    ret.return_value = JobFailed(str(error), error.exit_code)
    return ret


def _outside_training(exc: Exception, run_dir: str | None, job_num: int) -> MamlError:
    """The scheduler's signal went straight to submitit's handler (the trainer was not in its loop),
    which did not requeue the job: how to go on, in one line."""
    from maml_cli.engine.resume import resume_command

    reason = (str(exc).strip() or type(exc).__name__).rstrip(".")
    again = f"; continue with {resume_command(run_dir)}" if run_dir else ""
    return MamlError(f"job #{job_num}: the scheduler's signal came outside the training loop ({reason}){again}")


class RequeueingLauncher:
    """Mixed in before hydra-submitit-launcher's ``LocalLauncher`` / ``SlurmLauncher``.

    ``__call__`` runs in the job's process (submitit pickles the launcher); ``launch`` in the main one.
    """

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[Any, Any],
    ) -> JobReturn:
        from submitit.core.utils import UncompletedJobError

        # submitit's checkpoint() resubmits these same arguments, so a requeued job gets the same.
        overrides = with_resume(sweep_overrides)
        try:
            ret = super().__call__(overrides, job_dir_key, job_num, job_id, singleton_state)  # type: ignore[misc]
        except ReportedError as exc:
            error = exc.error
        except UncompletedJobError as exc:  # the signal came while Hydra set the job up
            error = _outside_training(exc, None, job_num)
        else:
            if ret.status != JobStatus.FAILED or not isinstance(ret._return_value, UncompletedJobError):
                return ret
            # Hydra caught it as the task's error: the signal came before or after the training loop.
            run_dir = (
                OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir", default=None) if ret.hydra_cfg else None
            )
            error = _outside_training(ret._return_value, run_dir, job_num)
        if isinstance(error, TrainingInterrupted) and error.exit_code - 128 == _preemption_signal():
            error = self._requeue(error)  # returns only when the job is not requeued
        return _failed(overrides, error)

    @staticmethod
    def _requeue(error: TrainingInterrupted) -> MamlError:
        """Hand the signal the trainer caught (and ``last.pt`` is saved for) to submitit's handler,
        which the trainer has put back: it calls ``checkpoint()`` and requeues the job, then exits
        the process (``SystemExit``). When it does not requeue (timed out ``max_num_timeout`` times,
        or not submitit's handler), the job ends with the trainer's line and the reason."""
        from submitit.core.utils import UncompletedJobError

        signum = _preemption_signal()
        handler = signal.getsignal(signum)
        if not callable(handler):
            return error
        log.info("last.pt saved; %s goes to submitit to requeue the job", signal.Signals(signum).name)
        try:
            handler(signum, None)
        except UncompletedJobError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return TrainingInterrupted(f"{error} ({reason})", signum)
        return error

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """The plugin's ``launch``, which reads ``job.results()[0]`` of every job, and which a job
        that left no result (or failed outside the task) ended at once with submitit's traceback,
        the job's stderr included. Here every job is waited for, and when jobs failed with an error
        of ours the multirun ends with one line (a single job's error keeps its exit status, e.g.
        143 for SIGTERM); Hydra's failed ``JobReturn`` would print "Error executing job" first. The
        jobs are wrapped as the plugin creates them (its executor is local to ``launch``)."""
        import submitit

        real_map_array = submitit.AutoExecutor.map_array

        def map_array(executor: Any, fn: Any, *iterables: Any) -> list[_Settled]:
            jobs = real_map_array(executor, fn, *iterables)
            overrides, numbers = iterables[0], iterables[2]  # (overrides, dir key, job number, id, state)
            return [_Settled(job, list(o), int(n)) for job, o, n in zip(jobs, overrides, numbers)]

        submitit.AutoExecutor.map_array = map_array
        try:
            returns = super().launch(job_overrides, initial_job_idx)  # type: ignore[misc]
        finally:
            submitit.AutoExecutor.map_array = real_map_array
        failed = [
            (initial_job_idx + i, r._return_value)
            for i, r in enumerate(returns)
            if r.status == JobStatus.FAILED and isinstance(r._return_value, MamlError)
        ]
        if len(failed) == 1:
            raise ReportedError(failed[0][1])
        if failed:
            jobs = " | ".join(f"job #{n}: {error}" for n, error in failed)
            raise ReportedError(MamlError(f"{len(failed)} of {len(returns)} jobs failed: {jobs}"))
        return returns


class _Settled:
    """A submitit job whose ``results()`` gives a failed ``JobReturn`` with one line instead of raising."""

    def __init__(self, job: Any, overrides: list[str], number: int) -> None:
        self.job, self.overrides, self.number = job, overrides, number

    def results(self) -> list[JobReturn]:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            return self.job.results()
        except (UncompletedJobError, FailedJobError) as exc:
            what = _one_line(exc, isinstance(exc, FailedJobError))
            logs = Path(str(self.job.paths.stderr)).parent
            error = MamlError(f"job #{self.number} (submitit job {self.job.job_id}) {what}; its logs: {logs}")
            return [_failed(self.overrides, error)]


def _one_line(exc: Exception, failed: bool) -> str:
    """submitit's many-line messages, in a few words: a failed job's message holds its traceback
    between two dashed lines (the last line of which is the error); an uncompleted job's says it
    "has not produced any output (state: ...)" on its second line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if failed:
        dashes = [i for i, line in enumerate(lines) if set(line) == {"-"}]
        trace = lines[dashes[0] + 1 : dashes[1]] if len(dashes) >= 2 else lines
        return f"failed: {trace[-1]}" if trace else "failed"
    said = next((line for line in lines if line.startswith("has not produced")), None)
    return f"ended without a result: it {said}" if said else f"ended without a result: {lines[0] if lines else exc}"
