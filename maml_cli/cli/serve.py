"""``maml-serve checkpoint=best.pt [host=127.0.0.1] [port=8000] [max_tasks=256] ...``: an HTTP API
that adapts a meta-trained model to tasks and predicts (:mod:`maml_cli.deploy.serve`), and a page
at ``/`` to try it in a browser.

Arguments are plain ``key=value`` (no ``serve.`` prefix, no Hydra), as ``maml-adapt``'s. It needs
the ``[serve]`` extra (FastAPI, uvicorn, python-multipart). Each worker thread runs torch with one
thread, so ``workers`` jobs share the cores without oversubscribing them.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import fields

import maml_cli.cli  # noqa: F401  (OpenMP's wait policy, before torch loads)
from maml_cli.cli.key_values import Option, command, device_of
from maml_cli.errors import ConfigError

PROG = "maml-serve"
EXTRA = "pip install 'maml-cli[serve]'"
TOKEN_ENV = "MAML_SERVE_TOKEN"
OPTIONS = (
    Option("checkpoint", "a checkpoint written by maml-train, e.g. RUN/checkpoints/best.pt", required=True),
    Option("host", "address to listen on (default 127.0.0.1: this machine only)"),
    Option("port", "port to listen on (default 8000; 0 picks a free one)"),
    Option("max_tasks", "adapted tasks kept, least recently used dropped first (default 256)"),
    Option("workers", "threads that adapt and predict, one torch thread each (default 2)"),
    Option("compile", "true: compile the default adaptation at start (torch.compile; small models, ~8x faster)"),
    Option("max_queue", "jobs that may wait for a worker; more are answered 503 with Retry-After (default 64)"),
    Option("max_steps", "most inner steps a task may ask for (default 100)"),
    Option("max_support", "most examples in one support set (default 250)"),
    Option("max_inputs", "most inputs in one predict request (default 256)"),
    Option("max_image_bytes", "largest uploaded file, bytes (default 5242880)"),
    Option("max_pixels", "largest image, width x height, checked before decoding (default 16000000)"),
    Option("max_body_bytes", "largest request body, bytes (default 67108864)"),
    Option("token", f"require 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV}, else none)"),
    Option("device", "cpu (default), cuda, cuda:1, mps ..."),
)
USAGE = f"""
usage: maml-serve checkpoint=RUN/checkpoints/best.pt [host=127.0.0.1] [port=8000] [key=value ...]

Serve a meta-trained model over HTTP: POST /tasks (a support set) adapts and answers a task id,
POST /tasks/ID/predict predicts, DELETE /tasks/ID, GET /info, GET /health; a page at / to try it.
Keys may carry the "serve." of the settings' name (serve.max_tasks=64 is max_tasks=64).
Needs the [serve] extra: {EXTRA}
"""


def missing_extra() -> str | None:
    """One line naming what of the ``[serve]`` extra is not installed, or None."""
    missing = []
    for module, package in (("fastapi", "fastapi"), ("uvicorn", "uvicorn")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    try:
        __import__("python_multipart")
    except ImportError:
        try:
            __import__("multipart")
        except ImportError:
            missing.append("python-multipart")
    if not missing:
        return None
    return f"maml-serve needs the [serve] extra ({', '.join(missing)} not installed): {EXTRA}"


def settings_of(args: dict[str, str]):
    from maml_cli.deploy.serve import ServeSettings

    values: dict[str, object] = {}
    for f in fields(ServeSettings):
        if f.name not in args:
            continue
        if f.name in ("host", "token"):
            values[f.name] = args[f.name]
            continue
        if f.name == "compile":
            flag = args[f.name].lower()
            if flag not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"compile={args[f.name]} must be true or false")
            values[f.name] = flag in ("true", "1", "yes")
            continue
        try:
            values[f.name] = int(args[f.name].replace("_", ""))
        except ValueError:
            raise ConfigError(f"{f.name}={args[f.name]} is not a whole number") from None
    if "token" not in values and os.environ.get(TOKEN_ENV):
        values["token"] = os.environ[TOKEN_ENV]
    return ServeSettings(**values)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args: dict[str, str]) -> None:
    problem = missing_extra()
    if problem:
        raise ConfigError(problem)
    import uvicorn

    from maml_cli.deploy.model import load
    from maml_cli.deploy.serve import create_app, torch_threads_per_worker

    settings = settings_of(args)
    meta = load(args["checkpoint"], device_of(args.get("device")))
    torch_threads_per_worker()
    if settings.compile:
        print(f"compiling the {meta.steps}-step adaptation for each of {settings.workers} workers ...", flush=True)
    started = time.perf_counter()
    app = create_app(meta, settings)
    if settings.compile:
        print(f"compiled in {time.perf_counter() - started:.1f} s", flush=True)
    info = meta.info()
    print(
        f"serving {args['checkpoint']} ({info['algorithm']}, {info['problem']}, input {info['input_shape']}, "
        f"{info['steps']} steps) at http://{settings.host}:{settings.port}/ with {settings.workers} workers, "
        f"{settings.max_tasks} tasks kept{', token required' if settings.token else ''}",
        flush=True,
    )
    if not settings.token and not _is_loopback(settings.host):
        print(f"note: host={settings.host} is reachable from other machines and no token= is set", file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=5)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The README and issues name the settings serve.max_tasks, serve.token ...: both spellings work.
    argv = [arg.removeprefix("serve.") for arg in argv]
    return command(PROG, OPTIONS, USAGE, _serve, argv)


if __name__ == "__main__":
    sys.exit(main())
