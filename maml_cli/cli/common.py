"""What both CLIs share: turning any failure caused by input into one line and an exit code."""

from __future__ import annotations

import difflib
import functools
import logging
import os
import sys
from collections.abc import Callable

from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from maml_cli.cli.job_log import log_to_file
from maml_cli.errors import MamlError


def _known_keys(exc: OmegaConfBaseException) -> list[str]:
    parent = getattr(exc, "parent_node", None)
    try:
        return [str(k) for k in parent.keys()] if parent is not None else []
    except Exception:
        return []


def _suggest(key: str | None, exc: OmegaConfBaseException) -> str:
    if not key:
        return ""
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, _known_keys(exc), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _hydra_file(exc: BaseException) -> str | None:
    """The file Hydra was writing when ``exc`` was raised without a file name: a full disk makes
    the ``close()`` of ``.hydra/config.yaml`` fail with a bare ``OSError``, and Hydra has already
    forgotten the run dir by the time the error reaches us; its ``_save_config`` frame still knows."""
    found, tb = None, exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "_save_config" and {"output_dir", "filename"} <= frame.f_locals.keys():
            found = os.path.join(str(frame.f_locals["output_dir"]), str(frame.f_locals["filename"]))
        tb = tb.tb_next
    return found


def describe(exc: BaseException) -> str:
    """A one-line description of an error caused by input, with a hint where one helps."""
    if isinstance(exc, MamlError):
        return str(exc)
    inner, seen = exc, set()
    while inner is not None and id(inner) not in seen:  # a resolver's own error (e.g. a table's)
        seen.add(id(inner))
        if isinstance(inner, MamlError):
            return str(inner)
        inner = inner.__cause__ or inner.__context__
    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else None
    omega = exc if isinstance(exc, OmegaConfBaseException) else cause
    head = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if omega is not None:
        key = getattr(omega, "full_key", None)
        msg = getattr(omega, "msg", None) or str(omega).strip().splitlines()[0]
        msg = msg.strip().splitlines()[0]
        if isinstance(omega, ConfigKeyError) or "not in struct" in msg or "not in '" in msg:
            return f"unknown config key '{key}'{_suggest(key, omega)}: {msg}; see the valid keys with --cfg job"
        where = f"'{key}': " if key else ""
        return f"invalid config value for {where}{msg}"
    if isinstance(exc, OSError) and (exc.filename or exc.errno):  # not Hydra's MissingConfigException
        reason = exc.strerror or type(exc).__name__
        where = " " + str(exc.filename or _hydra_file(exc) or "the run's files")
        return (
            f"cannot write or read{where}: {reason}; free some space or choose a writable location "
            "(e.g. hydra.run.dir=DIR)"
        )
    if type(exc).__name__ in ("ConfigCompositionException", "MissingConfigException", "OverrideParseException"):
        from maml_cli.cli.sweeps import missing_plugin

        plugin = missing_plugin(str(exc))
        if plugin:
            return plugin
        lines = []
        for line in str(exc).strip().splitlines():
            if line.startswith("Config search path"):
                break  # Hydra's search path dump says nothing a user can act on
            words = [w for w in line.split() if not w.endswith("_schema")]  # internal schema nodes
            lines.append(" ".join(words))
        return " ".join(line for line in lines if line)
    return head


def _reported_cause(exc: BaseException) -> BaseException | None:
    """The :class:`MamlError` or ``OSError`` behind ``exc``, if any: e.g. the log file that logging's
    ``dictConfig`` could not open, which it reports as "Unable to configure handler 'file'"."""
    if type(exc).__module__.startswith(("hydra", "omegaconf")):
        return None  # described by describe(); an OSError in its context is Hydra's own search
    seen: set[int] = set()
    cause = exc.__cause__  # an explicit `raise ... from`, never an exception merely being handled
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (MamlError, OSError)):
            return cause
        cause = cause.__cause__
    return None


class ReportedError(BaseException):
    """Carries a :class:`MamlError` past Hydra to :func:`run_cli` without Hydra logging it.

    Hydra logs "Error executing job with overrides ..." for every ``Exception`` a task raises,
    and turns one raised by a callback into a warning; a ``BaseException`` passes straight
    through to :func:`run_cli`, which prints one line.
    """

    def __init__(self, error: MamlError) -> None:
        super().__init__(str(error))
        self.error = error


def reports_errors(task: Callable) -> Callable:
    """Decorate a Hydra task function so its input errors reach :func:`run_cli` as one line.

    The line goes into the job's log file (``train.log``) too. In a multirun that
    :class:`~maml_cli.cli.sweeps.SweepReport` watches, a failing job does not end the multirun:
    its line is printed here, the job returns the worst objective for its metric, and the
    multirun fails at its end with a summary of the jobs that failed.
    """

    @functools.wraps(task)
    def wrapper(cfg, *args, **kwargs):
        from maml_cli.cli import sweeps

        try:
            value = task(cfg, *args, **kwargs)
        except MamlError as exc:
            if os.environ.get("MAML_DEBUG") == "1":
                raise
            log_to_file(f"error: {exc}", logging.ERROR)
            if not sweeps.survives(exc):
                raise ReportedError(exc) from exc
            print(f"error: {exc}", file=sys.stderr, flush=True)
            worst = sweeps.worst_objective(cfg)
            sweeps.record_job(value=worst, error=exc)
            return worst
        sweeps.record_job(value=value)
        return value

    return wrapper


def run_cli(hydra_main: Callable[[], object]) -> None:
    """Run a ``@hydra.main`` function; input errors become one line on stderr and exit 1.

    Hydra prints its own multi-line reports unless ``HYDRA_FULL_ERROR`` is set; setting it makes
    exceptions reach us so we can say them in one line. ``MAML_DEBUG=1`` shows full tracebacks.
    """
    debug = os.environ.get("MAML_DEBUG") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # A user's own model module in the working directory should be importable by _target_,
    # as it would be under `python -m`; appended so it never shadows an installed package.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        hydra_main()
    except (MamlError, ReportedError) as exc:
        error = exc.error if isinstance(exc, ReportedError) else exc
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        cause = None if isinstance(exc, (OSError, OmegaConfBaseException)) else _reported_cause(exc)
        if isinstance(cause, MamlError) and not debug:
            print(f"error: {cause}", file=sys.stderr)
            sys.exit(cause.exit_code)
        if isinstance(cause, OSError):
            exc = cause
        known = isinstance(exc, (OmegaConfBaseException, OSError)) or type(exc).__module__.startswith(
            ("hydra", "omegaconf")
        )
        if debug or not known:
            raise
        print(f"error: {describe(exc)}", file=sys.stderr)
        sys.exit(1)
