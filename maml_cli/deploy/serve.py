"""An HTTP API over a meta-trained model: adapt to a task from its support set, then predict.

    POST   /tasks                 support set -> {"task_id", "classes", "steps", "support", "adapt_ms"}
    POST   /tasks/{id}/predict    inputs -> {"predictions": [{"input", "class", "probabilities"} | {"input", "value"}]}
    DELETE /tasks/{id}
    GET    /info                  the checkpoint (MetaModel.info()) and this server's limits
    GET    /health                {"status": "ok", "tasks": n}; open without the token
    GET    /                      a page to try it in a browser (page.html)

A support set is either multipart/form-data, one file field per image whose field name is its
class (``-F cat=@a.png -F cat=@b.png -F dog=@c.png``; classes in the order they first appear,
an optional text field ``steps``), or JSON ``{"x": [...], "y": [...], "steps": N}``: ``x`` the
inputs as the model takes them (``[K, *input_shape]``, already preprocessed; a flat list for
one-feature rows), ``y`` targets (regression) or class names (classification). Inputs to predict
are file fields (any names, in order; named by their file names) or JSON ``{"x": [...]}``. For a
text model ``x`` may be a list of utterances (strings), tokenised by the checkpoint's own
tokeniser as ``maml-adapt`` tokenises a CSV's (:func:`maml_cli.deploy.inputs.encode_utterances`).
Uploaded images are decoded as the checkpoint's training images were
(:func:`maml_cli.deploy.inputs.preprocess`): converted, resized, inverted, standardised.

Adapted tasks live in a bounded LRU cache (``max_tasks``): the least recently used task is
dropped when a new one would exceed it, and its id answers 404. Adaptation, decoding and
prediction run off the event loop in ``workers`` threads, each with its own copy of the model
(``torch.func.functional_call`` swaps a module's parameters while it runs, so one module cannot
adapt two tasks at once). At most ``max_queue`` jobs wait for a worker; one more is answered 503
with ``Retry-After`` at once, so a burst costs its senders a retry instead of every client a
timeout and the server its memory (each waiting job holds its decoded inputs). Every limit
answers 4xx with one line, ``{"error": "..."}``; anything unexpected is logged with its
traceback and answered 500 with one line, never the traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import io
import json
import logging
import math
import queue
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from maml_cli.deploy.model import AdaptedModel, MetaModel
from maml_cli.errors import MamlError

log = logging.getLogger("maml_cli.serve")

PAGE = Path(__file__).with_name("page.html")
#: Paths answered without the token: the health check and the (static) page.
OPEN_PATHS = frozenset({"/", "/health"})


@dataclass
class ServeSettings:
    """The server's limits; ``maml-serve`` takes each as ``key=value``."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_tasks: int = 256  # adapted tasks kept (LRU)
    workers: int = 2  # threads that adapt and predict, each with one torch thread under maml-serve
    max_queue: int = 64  # jobs waiting for a worker; beyond that a request is answered 503 (Retry-After)
    max_steps: int = 100  # inner steps a task may ask for
    max_support: int = 250  # examples in one support set
    max_inputs: int = 256  # inputs in one predict request
    max_image_bytes: int = 5 * 2**20  # one uploaded file
    max_pixels: int = 16_000_000  # width x height of one image, read from its header before decoding
    max_body_bytes: int = 64 * 2**20  # one request, by Content-Length and while it streams in
    token: str | None = None  # when set, every path but / and /health needs "Authorization: Bearer <token>"
    compile: bool = False  # compile each worker's default adaptation at start (MetaModel.compile): small models

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            least = 0 if f.name == "max_queue" else 1
            if f.name == "compile":
                if not isinstance(value, bool):
                    raise MamlError(f"compile must be true or false, got {value!r}")
                continue
            if f.name not in ("host", "token", "port") and (not isinstance(value, int) or value < least):
                raise MamlError(f"{f.name} must be a whole number >= {least}, got {value!r}")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise MamlError(f"port must be a whole number from 0 to 65535, got {self.port!r}")

    def limits(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("host", "port", "token")}


class ApiError(Exception):
    """A request the server refuses: its status, one line saying why, and any headers to send."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


# -- the cache of adapted tasks -----------------------------------------------------------------------


class TaskCache:
    """Adapted tasks by id, the least recently used dropped beyond ``capacity``. Thread-safe."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.evicted = 0
        self._tasks: OrderedDict[str, AdaptedModel] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, task: AdaptedModel) -> str:
        task_id = uuid.uuid4().hex
        with self._lock:
            self._tasks[task_id] = task
            while len(self._tasks) > self.capacity:
                self._tasks.popitem(last=False)
                self.evicted += 1
        return task_id

    def get(self, task_id: str) -> AdaptedModel:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                raise ApiError(404, self._unknown(task_id))
            self._tasks.move_to_end(task_id)
            return task

    def remove(self, task_id: str) -> None:
        with self._lock:
            if self._tasks.pop(task_id, None) is None:
                raise ApiError(404, self._unknown(task_id))

    def _unknown(self, task_id: str) -> str:
        return (
            f"task {task_id[:64]} not found: it was deleted, evicted (this server keeps the {self.capacity} most "
            "recently used tasks) or never existed; create it again with POST /tasks"
        )

    def __len__(self) -> int:
        return len(self._tasks)


# -- the workers ----------------------------------------------------------------------------------------


class Workers:
    """``count`` threads, each lending one copy of the meta-model to the job it runs, and a queue
    of at most ``max_queue`` jobs waiting for them: a job beyond that is refused with a 503."""

    #: Seconds a refused client is told to wait: about one adaptation of the slower built-in models.
    RETRY_AFTER_S = 1

    def __init__(self, meta: MetaModel, count: int, max_queue: int = 64) -> None:
        self._models: queue.SimpleQueue[MetaModel] = queue.SimpleQueue()
        for i in range(count):
            self._models.put(meta if i == 0 else copy.deepcopy(meta))
        self._pool = ThreadPoolExecutor(count, thread_name_prefix="maml-serve")
        self.count, self.max_queue = count, max_queue
        self.pending = 0  # jobs running or waiting; changed only on the event loop's thread
        self.refused = 0

    def _with_model(self, job: Callable[[MetaModel], Any]) -> Any:
        meta = self._models.get()
        try:
            return job(meta)
        finally:
            self._models.put(meta)

    async def run(self, job: Callable[[MetaModel], Any]) -> Any:
        if self.pending >= self.count + self.max_queue:
            self.refused += 1
            raise ApiError(
                503,
                f"the server is busy: {self.pending - self.count} jobs are waiting for its {self.count} workers "
                f"(max_queue={self.max_queue}); retry in {self.RETRY_AFTER_S} s",
                {"Retry-After": str(self.RETRY_AFTER_S)},
            )
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._with_model, job)
        finally:
            self.pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# -- reading requests -------------------------------------------------------------------------------------


def _int_field(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ApiError(422, f"{name} must be a whole number, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ApiError(422, f"{name} must be a whole number, got {value!r}") from None


def decode_image(data: bytes, name: str, image: dict[str, Any], max_pixels: int) -> torch.Tensor:
    """uint8 ``[C, size, size]`` of one uploaded image, as training decoded its files; the size in
    its header is checked against ``max_pixels`` before any pixel is decoded."""
    from PIL import Image

    from maml_cli.data.image_files import _to_chw

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as picture:  # reads the header only
                width, height = picture.size
                if width * height > max_pixels:
                    raise ApiError(
                        413, f"image {name} is {width}x{height} pixels, more than max_pixels={max_pixels}; shrink it"
                    )
                return _to_chw(picture, int(image["size"]), int(image["channels"]))
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ApiError(413, f"image {name} is too large to decode safely ({exc})") from None
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, struct.error, EOFError...
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ApiError(422, f"{name} is not an image that can be decoded ({detail})") from None


def _tensor(value: Any, shape: tuple[int, ...], what: str, limit: int, limit_name: str) -> torch.Tensor:
    """JSON ``x`` as a float tensor ``[N, *shape]`` (a flat list for one-feature rows)."""
    if not isinstance(value, list) or not value:
        raise ApiError(422, f"{what} must be a non-empty list of inputs of shape {list(shape)}")
    if len(value) > limit:
        raise ApiError(413, f"{what} holds {len(value)} inputs, more than {limit_name}={limit}")
    try:
        x = torch.tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise ApiError(422, f"{what} must be a list of numbers nested as [N, {', '.join(map(str, shape))}]") from None
    if x.dim() == 1 and shape == (1,):
        x = x[:, None]
    if tuple(x.shape[1:]) != shape:
        raise ApiError(422, f"{what} has shape {list(x.shape)}; this model takes [N, {', '.join(map(str, shape))}]")
    if not torch.isfinite(x).all():
        raise ApiError(422, f"{what} holds NaN or infinite values")
    return x


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ApiError(400, 'the JSON body must be an object, e.g. {"x": [...]}')
    return body


def _kind(request: Request) -> str:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return "json"
    if content_type == "multipart/form-data":
        return "multipart"
    raise ApiError(415, f"send multipart/form-data (image files) or application/json, not {content_type or 'nothing'}")


# -- the app -----------------------------------------------------------------------------------------------


class _Guard:
    """Outermost: the token, the body limit (by Content-Length, then counting as it streams in),
    and a one-line 500 for anything unexpected (logged with its traceback here, sent without it)."""

    def __init__(self, app, settings: ServeSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_tracked(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def reply(response: JSONResponse) -> None:
            await response(scope, receive, send_tracked)

        limit = self.settings.max_body_bytes
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        token = self.settings.token
        if token and scope.get("path") not in OPEN_PATHS:
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                what = "a wrong token" if given else "no token"
                return await reply(
                    _error(
                        401,
                        f"this server needs 'Authorization: Bearer <token>' ({what} given)",
                        {"WWW-Authenticate": "Bearer"},
                    )
                )
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await reply(_error(400, f"Content-Length {length!r} is not a number"))
            if int(length) > limit:
                return await reply(_error(413, f"the request body is {length} bytes, more than max_body_bytes={limit}"))
        received = 0

        async def receive_limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(413, f"the request body is more than max_body_bytes={limit} bytes")
            return message

        try:
            await self.app(scope, receive_limited, send_tracked)
        except Exception as exc:
            if started:  # nothing more can be said to this client
                log.exception("error after the response started: %s %s", scope.get("method"), scope.get("path"))
                return
            if isinstance(exc, ApiError):
                return await reply(_error(exc.status, str(exc), exc.headers))
            log.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            await reply(_error(500, f"internal error ({type(exc).__name__}); the server log has the details"))


def create_app(meta: MetaModel, settings: ServeSettings | None = None) -> FastAPI:
    """The HTTP API over ``meta`` (see the module's docstring)."""
    settings = settings or ServeSettings()
    tasks = TaskCache(settings.max_tasks)
    if settings.compile and meta.steps not in meta.info()["compiled_steps"]:
        meta.compile()  # before the workers copy it: each copy compiles its own (MetaModel.__deepcopy__)
    workers = Workers(meta, settings.workers, settings.max_queue)
    image = meta.inputs.get("image") if meta.problem == "classification" else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        workers.close()

    app = FastAPI(title="maml-serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.tasks, app.state.workers, app.state.settings = tasks, workers, settings
    app.add_middleware(_Guard, settings=settings)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, str(exc), exc.headers)

    @app.exception_handler(MamlError)
    async def model_error(request: Request, exc: MamlError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            detail = f"no such path {request.url.path}; see GET /info and the README"
        return _error(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    # -- reading a request's inputs ----------------------------------------------------------------

    async def read_form(request: Request, limit: int, limit_name: str):
        """``(files as (field, file name, bytes), text fields)`` of a multipart body."""
        try:
            form = await request.form(max_files=limit, max_fields=16, max_part_size=64 * 1024)
        except StarletteHTTPException as exc:  # starlette's own limits (max_files ...) and malformed bodies
            status = 413 if "Too many files" in str(exc.detail) else 400
            detail = f"more than {limit_name}={limit} files" if status == 413 else exc.detail
            raise ApiError(status, f"cannot read the multipart body: {detail}") from None
        files, text = [], {}
        try:
            for field, value in form.multi_items():
                if isinstance(value, UploadFile):
                    name = value.filename or field
                    if value.size is not None and value.size > settings.max_image_bytes:
                        raise ApiError(
                            413,
                            f"file {name} is {value.size} bytes, more than max_image_bytes={settings.max_image_bytes}",
                        )
                    data = await value.read(settings.max_image_bytes + 1)
                    if len(data) > settings.max_image_bytes:
                        raise ApiError(413, f"file {name} is more than max_image_bytes={settings.max_image_bytes}")
                    files.append((field, name, data))
                else:
                    text[field] = value
        finally:
            await form.close()
        if len(files) > limit:
            raise ApiError(413, f"{len(files)} files, more than {limit_name}={limit}")
        return files, text

    def images_of(files: list[tuple[str, str, bytes]]) -> torch.Tensor:
        from maml_cli.deploy.inputs import preprocess

        pixels = torch.stack([decode_image(data, name, image, settings.max_pixels) for _, name, data in files])
        return preprocess(pixels, image)

    def steps_of(value: Any) -> int:
        if value is None:
            return min(meta.steps, settings.max_steps)
        steps = _int_field(value, "steps")
        if not 0 <= steps <= settings.max_steps:
            raise ApiError(422, f"steps={steps} is out of range: 0 to max_steps={settings.max_steps}")
        return steps

    def inputs_of(value: Any, spec: dict[str, Any], shape: tuple[int, ...], limit: int, limit_name: str):
        """JSON ``x``: utterances (strings) for a text model, else numbers as the model takes them."""
        if spec.get("text") and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            from maml_cli.deploy.inputs import encode_utterances, without_words

            if len(value) > limit:
                raise ApiError(413, f"x holds {len(value)} utterances, more than {limit_name}={limit}")
            empty = without_words(value)
            if empty:
                where = ", ".join(f"x[{i}]" for i in empty[:5]) + (f" and {len(empty) - 5} more" * (len(empty) > 5))
                raise ApiError(422, f"utterance(s) {where} have no words (empty, or punctuation only)")
            return encode_utterances(value, spec, "JSON")
        if spec.get("text") and isinstance(value, list) and any(isinstance(v, str) for v in value):
            raise ApiError(422, f"x must be a list of utterances (strings only) or of token-id rows {[*shape]}")
        return _tensor(value, shape, "x", limit, limit_name)

    def no_images() -> ApiError:
        from maml_cli.deploy.inputs import _what_it_takes

        if meta.inputs.get("text"):
            return ApiError(415, 'this model takes utterances, not image files: send JSON {"x": ["an utterance", ...]}')
        return ApiError(415, f'this model takes {_what_it_takes(meta.inputs)}, not image files: send JSON {{"x": ...}}')

    # -- the routes -------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "tasks": len(tasks),
            "max_tasks": tasks.capacity,
            "evicted": tasks.evicted,
            "jobs": workers.pending,  # running or waiting for a worker
            "refused": workers.refused,  # answered 503 since the server started
        }

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {**meta.info(), "takes_images": image is not None, "limits": settings.limits()}

    @app.post("/tasks")
    async def create_task(request: Request) -> dict[str, Any]:
        limit = settings.max_support
        if _kind(request) == "multipart":
            if image is None:
                raise no_images()
            files, text = await read_form(request, limit, "max_support")
            unknown = sorted(set(text) - {"steps"})
            if unknown:
                raise ApiError(422, f"unknown text field(s) {', '.join(unknown)}: send images as files named by class")
            if not files:
                raise ApiError(422, "no image files: send one file field per image, named by its class")
            classes = list(dict.fromkeys(field for field, _, _ in files))
            labels = torch.tensor([classes.index(field) for field, _, _ in files])
            steps = steps_of(text.get("steps"))

            def job(model: MetaModel):
                return model.adapt(images_of(files), labels, steps=steps, classes=classes)

        else:
            body = await _json_body(request)
            unknown = sorted(set(body) - {"x", "y", "steps"})
            if unknown:
                raise ApiError(422, f'unknown key(s) {", ".join(unknown)}; a support set is {{"x", "y", "steps"}}')
            x = inputs_of(body.get("x"), meta.inputs, meta.input_shape, limit, "max_support")
            y_list = body.get("y")
            if not isinstance(y_list, list) or len(y_list) != len(x):
                raise ApiError(422, f"y must be a list of {len(x)} targets or class names, one per row of x")
            steps = steps_of(body.get("steps"))
            if meta.problem == "classification":
                if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in y_list):
                    raise ApiError(422, "y must hold class names (strings or whole numbers)")
                classes = list(dict.fromkeys(str(v) for v in y_list))
                labels = torch.tensor([classes.index(str(v)) for v in y_list])
            else:
                classes = None
                labels = _targets(y_list)

            def job(model: MetaModel):
                return model.adapt(x, labels, steps=steps, classes=classes)

        if classes is not None and len(classes) < 2:
            raise ApiError(422, f"a classification task needs at least 2 classes, got {len(classes)} ({classes[0]})")
        start = time.perf_counter()
        adapted = await workers.run(job)
        elapsed = time.perf_counter() - start
        task_id = tasks.add(adapted)
        return {
            "task_id": task_id,
            "classes": adapted.classes,
            "steps": steps,
            "support": int(labels.shape[0]),
            "adapt_ms": round(1000 * elapsed, 3),
        }

    @app.post("/tasks/{task_id}/predict")
    async def predict(task_id: str, request: Request) -> dict[str, Any]:
        task = tasks.get(task_id)
        limit = settings.max_inputs
        if _kind(request) == "multipart":
            if image is None:
                raise no_images()
            files, text = await read_form(request, limit, "max_inputs")
            if text:
                raise ApiError(422, f"unknown text field(s) {', '.join(sorted(text))}: send the inputs as files")
            if not files:
                raise ApiError(422, "no image files to predict")
            names: list[Any] = [name for _, name, _ in files]

            def job(model: MetaModel):
                return task.predict(images_of(files))

        else:
            body = await _json_body(request)
            if set(body) - {"x"}:
                raise ApiError(422, f'unknown key(s) {", ".join(sorted(set(body) - {"x"}))}; send {{"x": [...]}}')
            x = inputs_of(body.get("x"), task.inputs, task.input_shape, limit, "max_inputs")
            names = list(range(len(x)))

            def job(model: MetaModel):
                return task.predict(x)

        out = (await workers.run(job)).cpu()
        return {"task_id": task_id, "predictions": _predictions(task, out, names)}

    @app.delete("/tasks/{task_id}")
    async def delete(task_id: str) -> dict[str, Any]:
        tasks.remove(task_id)
        return {"deleted": task_id}

    return app


def _targets(values: list[Any]) -> torch.Tensor:
    try:
        y = torch.tensor(values, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise ApiError(422, "y must hold numbers (one target, or one list of targets, per row of x)") from None
    if not torch.isfinite(y).all():
        raise ApiError(422, "y holds NaN or infinite values")
    return y


def _predictions(task: AdaptedModel, out: torch.Tensor, names: list[Any]) -> list[dict[str, Any]]:
    # JSON has no NaN: a diverged adaptation answers null rather than breaking the reply.
    out = out.float().nan_to_num(nan=math.inf)
    finite = torch.isfinite(out)

    def numbers(row: torch.Tensor, ok: torch.Tensor) -> list[float | None]:
        return [v if good else None for v, good in zip(row.tolist(), ok.tolist())]

    rows = []
    if task.problem == "classification":
        classes = task.classes or [str(i) for i in range(out.shape[-1])]
        for name, p, ok in zip(names, out, finite):
            best = classes[int(p.argmax())] if bool(ok.all()) else None
            rows.append({"input": name, "class": best, "probabilities": dict(zip(classes, numbers(p, ok)))})
    else:
        for name, value, ok in zip(names, out.reshape(len(names), -1), finite.reshape(len(names), -1)):
            values = numbers(value, ok)
            rows.append({"input": name, "value": values[0] if len(values) == 1 else values})
    return rows


def torch_threads_per_worker() -> None:
    """One torch thread per worker thread: ``workers`` jobs share the cores without oversubscribing."""
    torch.set_num_threads(1)
