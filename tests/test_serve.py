"""maml-serve on a real server on 127.0.0.1 (uvicorn in a thread, and the console script once):
adapt from uploaded images as maml-adapt does from files, predict, delete, the LRU, the token,
every limit as a one-line 4xx, concurrency, and the page in a real headless browser."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

if os.environ.get("CI", "").lower() != "true":  # CI installs [serve]: there a missing extra fails
    pytest.importorskip("fastapi", reason="needs the [serve] extra: pip install 'maml-cli[serve]'")

import maml_cli  # noqa: E402
from maml_cli.deploy.inputs import read_images, read_support_folder  # noqa: E402
from maml_cli.deploy.model import AdaptedModel  # noqa: E402
from maml_cli.deploy.serve import ServeSettings, create_app  # noqa: E402

from .helpers import BIN, write_untrained_checkpoint  # noqa: E402

SIZE, WAYS = 16, 3
CLASSES = ["cat", "dog", "emu"]
SPEC = {
    "problem": "classification",
    "input_shape": [1, SIZE, SIZE],
    "ways": WAYS,
    "image": {"size": SIZE, "channels": 1, "mean": [0.2], "std": [0.4], "inverted": True},
}


def _write_checkpoint(path: Path, overrides: list[str], spec: dict, shape: tuple[int, ...]) -> Path:
    return write_untrained_checkpoint(path, overrides, spec, shape)[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An untrained Conv-4's checkpoint (no data needed), a support folder and query images."""
    root = tmp_path_factory.mktemp("serve")
    overrides = [
        "dataset=image_folder",
        "dataset.path=/not/needed/to/deploy",
        f"dataset.ways={WAYS}",
        f"dataset.image_size={SIZE}",
        "dataset.channels=1",
        "model=conv4",
        "model.hidden=4",
        "inner_loop.eval_steps=2",
    ]
    checkpoint = _write_checkpoint(root / "best.pt", overrides, SPEC, (1, SIZE, SIZE))
    rng = np.random.default_rng(0)
    support = {}
    for c, name in enumerate(CLASSES):
        for i in range(2):  # RGB of another size: the server converts and resizes as training did
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) // (c + 1)
            path = root / "support" / name / f"{name}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            support.setdefault(name, []).append(path)
    queries = []
    for i in range(4):
        path = root / "query" / f"q{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (18, 18), dtype=np.uint8)).save(path)
        queries.append(path)
    sinusoid = _write_checkpoint(
        root / "sinusoid.pt",
        ["model.hidden_sizes=[16,16]", "inner_loop.eval_steps=3"],
        {"problem": "regression", "input_shape": [1], "features": ["x"], "target": "y"},
        (1,),
    )
    return {"checkpoint": checkpoint, "support": support, "queries": queries, "root": root, "sinusoid": sinusoid}


@pytest.fixture(scope="module")
def meta(files):
    return maml_cli.load(files["checkpoint"])


# -- a real server and a plain HTTP client ----------------------------------------------------------


@contextlib.contextmanager
def serving(meta, **settings):
    """``create_app(meta, settings)`` under uvicorn on 127.0.0.1 (a free port), in a thread."""
    import uvicorn

    app = create_app(meta, ServeSettings(port=0, **settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Client(port)
    finally:
        server.should_exit = True
        thread.join(10)


class Client:
    def __init__(self, port: int, token: str | None = None) -> None:
        self.port, self.token = port, token

    def request(self, method: str, path: str, body=None, headers=None, token=None, **kwargs):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = dict(headers or {})
        if token or self.token:
            headers["Authorization"] = f"Bearer {token or self.token}"
        try:
            connection.request(method, path, body=body, headers=headers, **kwargs)
            response = connection.getresponse()
            data = response.read()
            self.last_headers = {k.lower(): v for k, v in response.getheaders()}
        finally:
            connection.close()
        kind = response.getheader("content-type", "")
        return response.status, json.loads(data) if kind.startswith("application/json") else data.decode()

    def json(self, method: str, path: str, payload, **kwargs):
        body = json.dumps(payload).encode()
        return self.request(method, path, body, {"Content-Type": "application/json"}, **kwargs)

    def files(self, path: str, fields: list[tuple[str, str, bytes]], text: dict | None = None, **kwargs):
        body, content_type = multipart(fields, text)
        return self.request("POST", path, body, {"Content-Type": content_type}, **kwargs)


def multipart(fields: list[tuple[str, str, bytes]], text: dict | None = None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in (text or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, filename, data in fields:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def support_fields(files) -> list[tuple[str, str, bytes]]:
    return [(name, path.name, path.read_bytes()) for name, paths in files["support"].items() for path in paths]


def query_fields(files) -> list[tuple[str, str, bytes]]:
    return [("file", path.name, path.read_bytes()) for path in files["queries"]]


def assert_one_line_error(status: int, body, expected: int, *words: str) -> None:
    assert status == expected, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    for word in words:
        assert word in body["error"], body


def tiny_png(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height``, with one row of data: decoding it would fail
    (or allocate width x height), reading its header does not."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


# -- the tests -----------------------------------------------------------------------------------------------


def test_adapt_predict_delete_over_http_as_maml_adapt_does_from_files(files, meta):
    with serving(meta) as client:
        assert client.request("GET", "/health") == (
            200,
            {"status": "ok", "tasks": 0, "max_tasks": 256, "evicted": 0, "jobs": 0, "refused": 0},
        )
        status, info = client.request("GET", "/info")
        assert status == 200 and info["algorithm"] == "MAML" and info["ways"] == WAYS
        assert info["input_shape"] == [1, SIZE, SIZE] and info["steps"] == 2 and info["takes_images"]

        status, task = client.files("/tasks", support_fields(files), {"steps": "3"})
        assert status == 200, task
        assert task["classes"] == CLASSES and task["steps"] == 3 and task["support"] == 6 and task["adapt_ms"] > 0
        status, answer = client.files(f"/tasks/{task['task_id']}/predict", query_fields(files))
        assert status == 200, answer

        # The same task from the same files through the Python API: the same probabilities.
        x, y, classes = read_support_folder(files["root"] / "support", meta.inputs)
        expected = meta.adapt(x, y, steps=3, classes=classes).predict(read_images(files["queries"], meta.inputs)[0])
        got = torch.tensor([[row["probabilities"][c] for c in CLASSES] for row in answer["predictions"]])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert [row["input"] for row in answer["predictions"]] == [p.name for p in files["queries"]]
        assert [row["class"] for row in answer["predictions"]] == [CLASSES[i] for i in expected.argmax(-1)]

        assert client.request("DELETE", f"/tasks/{task['task_id']}") == (200, {"deleted": task["task_id"]})
        status, body = client.files(f"/tasks/{task['task_id']}/predict", query_fields(files))
        assert_one_line_error(status, body, 404, "not found", "evicted")
        assert_one_line_error(*client.request("DELETE", f"/tasks/{task['task_id']}"), 404)
        assert_one_line_error(*client.request("GET", "/nowhere"), 404, "no such path")
        assert_one_line_error(*client.request("PUT", "/tasks"), 405)
        page = client.request("GET", "/")
        assert page[0] == 200 and "<script>" in page[1] and "http" not in page[1].split("<script>")[1]  # no CDN


def test_json_rows_for_a_regression_model(files):
    sinusoid = maml_cli.load(files["sinusoid"])
    xs = [[-2.0], [-1.0], [0.0], [1.0], [2.0]]
    ys = [float(np.sin(v[0])) for v in xs]
    with serving(sinusoid) as client:
        status, task = client.json("POST", "/tasks", {"x": [v[0] for v in xs], "y": ys, "steps": 4})
        assert status == 200 and task["classes"] is None and task["steps"] == 4, task
        status, answer = client.json("POST", f"/tasks/{task['task_id']}/predict", {"x": [[0.5], [1.5]]})
        expected = sinusoid.adapt(torch.tensor(xs), torch.tensor(ys), steps=4).predict(torch.tensor([[0.5], [1.5]]))
        assert status == 200
        assert [row["value"] for row in answer["predictions"]] == pytest.approx(expected[:, 0].tolist(), rel=1e-5)
        assert_one_line_error(*client.json("POST", "/tasks", {"x": [[1.0, 2.0]], "y": [1.0]}), 422, "shape")
        assert_one_line_error(*client.json("POST", "/tasks", {"x": [1.0, 2.0], "y": [1.0]}), 422, "y must")
        assert_one_line_error(*client.json("POST", "/tasks", {"x": [1.0], "y": [1.0], "z": 1}), 422, "unknown")
        assert_one_line_error(*client.json("POST", "/tasks", {"x": "NaN", "y": [1.0]}), 422)
        assert_one_line_error(*client.json("POST", "/tasks", {"x": [1.0], "y": ["a"]}), 422, "numbers")
        status, body = client.files("/tasks", [("a", "a.png", files["queries"][0].read_bytes())])
        assert_one_line_error(status, body, 415, "not image files")


def test_a_token_guards_everything_but_health_and_the_page(meta, monkeypatch):
    with serving(meta, token="s3cret") as client:
        assert client.request("GET", "/health")[0] == 200 and client.request("GET", "/")[0] == 200
        assert_one_line_error(*client.request("GET", "/info"), 401, "Bearer", "no token")
        assert_one_line_error(*client.request("GET", "/info", token="wrong"), 401, "wrong token")
        assert_one_line_error(*client.json("POST", "/tasks", {"x": [], "y": []}), 401)
        assert client.request("GET", "/info", token="s3cret")[0] == 200


def test_every_limit_is_a_one_line_4xx(files, meta, monkeypatch):
    limits = dict(max_body_bytes=200_000, max_support=4, max_inputs=2, max_steps=5, max_image_bytes=60_000)
    with serving(meta, max_pixels=10_000, **limits) as client:
        fields = support_fields(files)
        status, body = client.request("POST", "/tasks", b"x" * 300_000, {"Content-Type": "application/json"})
        assert_one_line_error(status, body, 413, "max_body_bytes=200000")
        chunks = (b"y" * 50_000 for _ in range(6))  # no Content-Length: counted as it streams in
        status, body = client.request(
            "POST", "/tasks", chunks, {"Content-Type": "application/json"}, encode_chunked=True
        )
        assert_one_line_error(status, body, 413, "max_body_bytes")

        assert_one_line_error(*client.files("/tasks", fields), 413, "max_support=4")
        assert_one_line_error(*client.files("/tasks", fields[:4], {"steps": "6"}), 422, "max_steps=5")
        assert_one_line_error(*client.files("/tasks", fields[:4], {"steps": "many"}), 422, "whole number")
        assert_one_line_error(*client.files("/tasks", fields[:4], {"shots": "1"}), 422, "shots")
        assert_one_line_error(*client.files("/tasks", fields[:2]), 422, "at least 2 classes")
        not_image = [*fields[:3], ("emu", "notes.png", b"these are not pixels")]
        assert_one_line_error(*client.files("/tasks", not_image), 422, "notes.png", "not an image")
        big = [*fields[:3], ("emu", "big.png", os.urandom(70_000))]
        assert_one_line_error(*client.files("/tasks", big), 413, "big.png", "max_image_bytes=60000")

        decoded = []
        import maml_cli.data.image_files as image_files

        real = image_files._to_chw
        monkeypatch.setattr(image_files, "_to_chw", lambda *a: decoded.append(1) or real(*a))
        bomb = [*fields[:3], ("emu", "bomb.png", tiny_png(200_000, 200_000))]  # 40 gigapixels in 100 bytes
        assert_one_line_error(*client.files("/tasks", bomb), 413, "bomb.png")
        wide = [*fields[:3], ("emu", "wide.png", tiny_png(1000, 11))]
        assert_one_line_error(*client.files("/tasks", wide), 413, "1000x11", "max_pixels=10000")
        assert decoded == [1, 1, 1] * 2  # the good images of each request, never the large ones

        status, task = client.files("/tasks", [*fields[:3], fields[4]])
        assert status == 200, task
        predict = f"/tasks/{task['task_id']}/predict"
        assert_one_line_error(*client.files(predict, query_fields(files)), 413, "max_inputs=2")
        assert_one_line_error(*client.files(predict, []), 422, "no image files")
        assert_one_line_error(*client.request("POST", predict, b"{", {"Content-Type": "application/json"}), 400, "JSON")
        assert_one_line_error(*client.json("POST", predict, {"x": [[1.0]]}), 422, "shape")
        assert_one_line_error(*client.request("POST", predict, b"hi", {"Content-Type": "text/plain"}), 415)

        # Anything unexpected: a 500 of one line, the traceback only in the server's log.
        monkeypatch.setattr(AdaptedModel, "predict", lambda self, x: 1 / 0)
        assert_one_line_error(*client.files(predict, query_fields(files)[:1]), 500, "ZeroDivisionError")
        assert client.request("GET", "/health")[0] == 200


def test_the_least_recently_used_task_is_evicted(files, meta):
    with serving(meta, max_tasks=2) as client:
        ids = []
        for _ in range(2):
            status, task = client.files("/tasks", support_fields(files), {"steps": "1"})
            ids.append(task["task_id"])
        assert client.files(f"/tasks/{ids[0]}/predict", query_fields(files))[0] == 200  # the first is used again
        ids.append(client.files("/tasks", support_fields(files), {"steps": "1"})[1]["task_id"])
        assert_one_line_error(*client.files(f"/tasks/{ids[1]}/predict", query_fields(files)), 404, "evicted")
        assert client.files(f"/tasks/{ids[0]}/predict", query_fields(files))[0] == 200
        assert client.files(f"/tasks/{ids[2]}/predict", query_fields(files))[0] == 200
        health = client.request("GET", "/health")[1]
        assert {k: health[k] for k in ("status", "tasks", "max_tasks", "evicted")} == {
            "status": "ok",
            "tasks": 2,
            "max_tasks": 2,
            "evicted": 1,
        }


def test_a_full_queue_answers_503_with_retry_after_and_the_queued_jobs_still_finish(files, meta, monkeypatch):
    """One worker and max_queue=1: with one adaptation running and one waiting, a third request is
    refused at once (503, Retry-After, one line); the two admitted ones complete once it unblocks."""
    release = threading.Event()
    adapt = type(meta).adapt

    def slow_adapt(self, *args, **kwargs):
        assert release.wait(30), "the test never released the worker"
        return adapt(self, *args, **kwargs)

    monkeypatch.setattr(type(meta), "adapt", slow_adapt)
    with serving(meta, workers=1, max_queue=1) as client:
        with ThreadPoolExecutor(2) as pool:
            admitted = [pool.submit(client.files, "/tasks", support_fields(files), {"steps": "1"}) for _ in range(2)]
            deadline = time.monotonic() + 20
            while client.request("GET", "/health")[1]["jobs"] < 2:
                assert time.monotonic() < deadline, "the two requests never reached the workers"
                time.sleep(0.02)
            status, body = client.files("/tasks", support_fields(files), {"steps": "1"})
            assert_one_line_error(status, body, 503, "busy", "max_queue=1", "retry")
            assert client.last_headers.get("retry-after") == "1"
            release.set()
            assert [f.result()[0] for f in admitted] == [200, 200]
        health = client.request("GET", "/health")[1]
        assert (health["jobs"], health["refused"], health["tasks"]) == (0, 1, 2)


def test_concurrent_requests_adapt_each_task_alone(files, meta):
    """16 clients at once on 2 workers: no 5xx, and every task predicts what it predicts alone
    (each worker adapts with its own copy of the model)."""
    steps = [1, 2, 3, 4]
    x, y, classes = read_support_folder(files["root"] / "support", meta.inputs)
    query = read_images(files["queries"], meta.inputs)[0]
    expected = {s: meta.adapt(x, y, steps=s, classes=classes).predict(query) for s in steps}
    with serving(meta, workers=2) as client:

        def one(i: int):
            s = steps[i % len(steps)]
            status, task = client.files("/tasks", support_fields(files), {"steps": str(s)})
            assert status == 200, task
            status, answer = client.files(f"/tasks/{task['task_id']}/predict", query_fields(files))
            assert status == 200, answer
            return s, torch.tensor([[row["probabilities"][c] for c in CLASSES] for row in answer["predictions"]])

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(32)))
    for s, got in results:
        torch.testing.assert_close(got, expected[s], rtol=1e-5, atol=1e-6)


def test_maml_serve_runs_the_server_and_says_a_missing_extra_in_one_line(files, monkeypatch, capsys):
    from maml_cli.cli import serve

    assert serve.main(["--help"]) == 0 and "max_tasks=VALUE" in capsys.readouterr().out
    assert serve.main(["checkpoint=x", "serve.max_taks=3"]) == 1  # serve.max_tasks is max_tasks: both spellings
    assert "unknown argument 'max_taks' (did you mean 'max_tasks'?)" in capsys.readouterr().err
    assert serve.main([f"checkpoint={files['checkpoint']}", "serve.max_tasks=0"]) == 1
    assert "max_tasks must be a whole number >= 1" in capsys.readouterr().err
    assert serve.main([f"checkpoint={files['checkpoint']}", "compile=maybe"]) == 1
    assert "compile=maybe must be true or false" in capsys.readouterr().err
    assert serve.main([f"checkpoint={files['checkpoint']}", "workers=0"]) == 1
    assert "workers must be a whole number >= 1" in capsys.readouterr().err
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "fastapi", None)
        assert serve.main([f"checkpoint={files['checkpoint']}"]) == 1
        err = capsys.readouterr().err.strip()
        assert err == "error: maml-serve needs the [serve] extra (fastapi not installed): pip install 'maml-cli[serve]'"

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MAML_SERVE_TOKEN": "from-env"}
    command = [str(BIN / "maml-serve"), f"checkpoint={files['checkpoint']}", "port=0", "max_tasks=5"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        port, lines = None, []
        for line in process.stdout:
            lines.append(line)
            if "Uvicorn running on" in line:
                port = int(line.split("http://127.0.0.1:")[1].split()[0])
                break
        assert port, "".join(lines)
        assert "serving" in lines[0] and "5 tasks kept, token required" in lines[0]
        client = Client(port)
        assert client.request("GET", "/health")[1]["max_tasks"] == 5
        assert client.request("GET", "/info")[0] == 401
        assert client.request("GET", "/info", token="from-env")[0] == 200
    finally:
        process.terminate()
        process.wait(20)


# -- the page, in a real browser ----------------------------------------------------------------------------


def _browser():
    """Headless Chromium through chromium-driver; under CI a missing browser fails the test."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    webdriver = None
    with contextlib.suppress(ImportError):
        from selenium import webdriver
    if not (chromium and driver_path and webdriver):
        missing = "selenium" if webdriver is None else "chromium and chromium-driver"
        why = f"the page test needs {missing} (apt-get install -y chromium chromium-driver; pip install selenium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    return webdriver, options, Service(driver_path)


def test_the_page_adapts_and_predicts_in_a_browser(files, meta, tmp_path):
    webdriver, options, service = _browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    with serving(meta, token="page-token") as client:
        browser = webdriver.Chrome(options=options, service=service)
        try:
            browser.get(f"http://127.0.0.1:{client.port}/")
            wait = WebDriverWait(browser, 30)
            wait.until(lambda b: "Bearer" in b.find_element(By.ID, "error").text)
            browser.find_element(By.ID, "token").send_keys("page-token" + Keys.TAB)  # change fires on leaving it
            wait.until(lambda b: b.find_element(By.ID, "image-ui").is_displayed())
            assert "MAML" in browser.find_element(By.ID, "info").text
            rows = browser.find_elements(By.CSS_SELECTOR, "#classes .class")
            assert len(rows) == WAYS
            for row, name in zip(rows, CLASSES):
                row.find_element(By.CSS_SELECTOR, ".name").clear()
                row.find_element(By.CSS_SELECTOR, ".name").send_keys(name)
                paths = "\n".join(str(p) for p in files["support"][name])
                row.find_element(By.CSS_SELECTOR, ".files").send_keys(paths)
            browser.find_element(By.ID, "steps").send_keys("3")
            browser.find_element(By.ID, "adapt").click()
            wait.until(lambda b: "ms" in b.find_element(By.ID, "task").text or b.find_element(By.ID, "error").text)
            assert browser.find_element(By.ID, "error").text == ""
            assert "3 classes, 6 images, 3 steps" in browser.find_element(By.ID, "task").text
            browser.find_element(By.ID, "query").send_keys("\n".join(str(p) for p in files["queries"]))
            browser.find_element(By.ID, "predict").click()
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#predictions .predicted"))
            shown = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#predictions .predicted")]
        finally:
            browser.quit()
    x, y, classes = read_support_folder(files["root"] / "support", meta.inputs)
    expected = meta.adapt(x, y, steps=3, classes=classes).predict(read_images(files["queries"], meta.inputs)[0])
    assert shown == [CLASSES[i] for i in expected.argmax(-1)]


def test_page_is_packaged():
    from maml_cli.deploy import serve

    assert serve.PAGE.read_text(encoding="utf-8").startswith("<!doctype html>")
