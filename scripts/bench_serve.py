"""Latency of deployment and a load test of ``maml-serve`` (not a test: run it by hand).

    python scripts/bench_serve.py [--tasks 200] [--clients 32] [--seconds 60] [--out bench-out/serve]

1. In process, through the Python API (``maml_cli.load(...).adapt(...).predict(...)``), with one
   torch thread as each of the server's workers has: an Omniglot 5-way 1-shot Conv-4 (64 channels,
   28x28 grey) and the sinusoid MLP (40-40, 10 shots): adapt in 10 steps, predict one input and a
   batch of 100; p50 and p99 over ``--tasks`` tasks. The weights are untrained (built from the
   experiment's config and written as maml-train writes a checkpoint): latency does not depend on
   what the weights are. Targets: Conv-4 adapt + predict(1) p99 <= 50 ms, MLP <= 5 ms.
2. ``maml-serve`` (the console script, a separate process) on 127.0.0.1 with the Conv-4:
   ``--clients`` threads, each on its own keep-alive connection, for ``--seconds`` s create a task
   (5 PNG images, 10 steps), predict one image with it, and every 2nd round predict with a
   task id that ``max_tasks`` newer tasks have pushed out of the LRU: those must answer 404.
   Throughput, p50/p99 per request kind, the status codes, and the server's RSS once the cache is
   full (warm) and at the end.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from toolkit import provenance

import maml_cli
from maml_cli.config import config_dir, register_configs
from maml_cli.engine.build import build_algorithm, build_model
from maml_cli.engine.checkpoint import FORMAT_VERSION, save_checkpoint

BIN = Path(sys.executable).parent
OMNIGLOT = {
    "problem": "classification",
    "input_shape": [1, 28, 28],
    "ways": 5,
    "image": {"size": 28, "channels": 1, "mean": None, "std": None, "inverted": True},
}
SINUSOID = {"problem": "regression", "input_shape": [1], "features": ["x"], "target": "y"}


def write_checkpoint(path: Path, experiment: str, spec: dict) -> Path:
    """An untrained model of ``experiment`` as maml-train writes a checkpoint."""
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}"])
    torch.manual_seed(0)
    model = build_model(cfg, torch.device("cpu"), tuple(spec["input_shape"]))
    algorithm = build_algorithm(cfg, model, torch.nn.functional.cross_entropy)
    state = {
        "format_version": FORMAT_VERSION,
        "step": 0,
        "model": algorithm.state_dict(),
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "inputs": spec,
    }
    save_checkpoint(state, path)
    return path


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def in_process(checkpoint: Path, tasks: int, support: int, classification: bool, compiled: bool):
    """Latencies by measure, and the seconds compiling took (0 for the eager loop)."""
    meta = maml_cli.load(checkpoint)
    compile_s = meta.compile(10) if compiled else 0.0
    shape = meta.input_shape
    g = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {
        "adapt (10 steps)": [],
        "predict 1": [],
        "predict 100": [],
        "adapt + predict 1": [],
    }
    for i in range(tasks + 10):  # 10 warm-up tasks not counted
        x = torch.randn(support, *shape, generator=g)
        y = torch.arange(support) if classification else torch.sin(x[:, 0])
        one, hundred = torch.randn(1, *shape, generator=g), torch.randn(100, *shape, generator=g)
        start = time.perf_counter()
        adapted = meta.adapt(x, y, steps=10)
        adapt_done = time.perf_counter()
        adapted.predict(one)
        predict_done = time.perf_counter()
        adapted.predict(hundred)
        batch_done = time.perf_counter()
        if i >= 10:
            times["adapt (10 steps)"].append(1000 * (adapt_done - start))
            times["predict 1"].append(1000 * (predict_done - adapt_done))
            times["predict 100"].append(1000 * (batch_done - predict_done))
            times["adapt + predict 1"].append(1000 * (predict_done - start))
    return times, compile_s


def arithmetic_bound(checkpoint: Path, support: int, steps: int = 10) -> str:
    """What adapting a task costs in arithmetic alone: the floating-point operations of ``steps``
    forward and backward passes on the support set (torch's FLOP counter), against the fastest
    this core multiplies matrices (a 1024^3 float32 matmul, one thread, best of 10): an
    implementation that performs these operations cannot adapt faster than their ratio here (one
    that avoids some, a Winograd convolution, could come closer)."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = maml_cli.load(checkpoint)
    model = meta.algorithm.model
    x = torch.randn(support, *meta.input_shape)
    with FlopCounterMode(display=False) as counter:
        loss = torch.nn.functional.cross_entropy(model(x), torch.arange(support) % meta.ways)
        torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    flops = steps * counter.get_total_flops()
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = float("inf")
    for i in range(13):
        start = time.perf_counter()
        a @ b
        if i >= 3:
            best = min(best, time.perf_counter() - start)
    gflops = 2 * 1024**3 / best / 1e9
    return (
        f"arithmetic bound: {steps} steps of the Conv-4 on {support} images are {flops / 1e9:.2f} GFLOP; this core "
        f"multiplies matrices at {gflops:.1f} GFLOP/s at best (1 thread), so these operations alone take "
        f"{1000 * flops / 1e9 / gflops:.0f} ms at that rate"
    )


# -- the load test ----------------------------------------------------------------------------------------


def png(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(fields: list[tuple[str, str, bytes]], text: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in text.items()
    ]
    for name, filename, data in fields:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        parts.append(head.encode() + b"Content-Type: image/png\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(checkpoint: Path, max_tasks: int, workers: int, *extra: str) -> tuple[subprocess.Popen, int]:
    command = [
        str(BIN / "maml-serve"),
        f"checkpoint={checkpoint}",
        "port=0",
        f"max_tasks={max_tasks}",
        f"workers={workers}",
        *extra,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MAML_SERVE_TOKEN", None)
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in server.stdout:
        if "Uvicorn running on" in line:
            port = int(line.split("http://127.0.0.1:")[1].split()[0])
            break
    else:
        raise SystemExit("maml-serve did not start")
    log = Path(os.environ.get("BENCH_SERVE_LOG", "/tmp/bench_serve_server.log"))

    def drain() -> None:  # uvicorn's access log: read it so the pipe never fills
        with open(log, "w") as file:
            for line in server.stdout:
                if " 200 OK" not in line and " 404 Not Found" not in line:
                    file.write(line)

    threading.Thread(target=drain, daemon=True).start()
    return server, port


def burst(checkpoint: Path, clients: int, max_queue: int) -> dict:
    """``clients`` task creations at once on one worker with ``max_queue`` places: how many are
    admitted (200) and how many refused at once (503 with Retry-After), and how fast a refusal is."""
    server, port = start_server(checkpoint, 16, 1, f"max_queue={max_queue}")
    rng = np.random.default_rng(1)
    body, kind = multipart([(f"c{k}", f"{k}.png", png(rng)) for k in range(5)], {"steps": "10"})
    gate = threading.Barrier(clients)
    results: list[tuple[int, str | None, float]] = []
    lock = threading.Lock()

    def one() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        gate.wait()
        start = time.perf_counter()
        connection.request("POST", "/tasks", body=body, headers={"Content-Type": kind})
        response = connection.getresponse()
        response.read()
        with lock:
            results.append((response.status, response.getheader("Retry-After"), 1000 * (time.perf_counter() - start)))
        connection.close()

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    server.terminate()
    server.wait(30)
    refused = [ms for status, retry, ms in results if status == 503 and retry]
    return {
        "statuses": dict(sorted({s: sum(1 for r in results if r[0] == s) for s, _, _ in results}.items())),
        "refused_p50_ms": float(np.percentile(refused, 50)) if refused else float("nan"),
    }


def load_test(checkpoint: Path, clients: int, seconds: float, max_tasks: int, workers: int) -> dict:
    server, port = start_server(checkpoint, max_tasks, workers)
    rng = np.random.default_rng(0)
    images = [png(rng) for _ in range(64)]
    lock = threading.Lock()
    latencies: dict[str, list[float]] = {"POST /tasks": [], "POST predict (1 image)": [], "predict evicted id": []}
    statuses: dict[int, int] = {}
    errors: list[str] = []
    stop = time.monotonic() + seconds
    warm = threading.Event()

    def request(connection, kind: str, path: str, body: bytes, content_type: str):
        start = time.perf_counter()
        connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        data = response.read()
        elapsed = 1000 * (time.perf_counter() - start)
        with lock:
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if warm.is_set():
                latencies[kind].append(elapsed)
        return response.status, data

    created: list[str] = []  # every task id, in the order the server answered them

    def client(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        local = np.random.default_rng(number)
        round_ = 0
        try:
            while time.monotonic() < stop:
                fields = [(f"c{k}", f"{k}.png", images[int(local.integers(64))]) for k in range(5)]
                body, kind = multipart(fields, {"steps": "10"})
                status, data = request(connection, "POST /tasks", "/tasks", body, kind)
                if status != 200:
                    errors.append(f"POST /tasks {status} {data[:200]!r}")
                    continue
                task_id = json.loads(data)["task_id"]
                with lock:
                    created.append(task_id)
                body, kind = multipart([("file", "q.png", images[int(local.integers(64))])], {})
                status, data = request(connection, "POST predict (1 image)", f"/tasks/{task_id}/predict", body, kind)
                if status != 200:
                    errors.append(f"predict {status} {data[:200]!r}")
                round_ += 1
                # An id last used before max_tasks tasks were created is evicted; each client has one
                # request in flight, so 2 x clients more make sure its last predict came before them.
                with lock:
                    old_enough = len(created) - max_tasks - 2 * clients
                    old = created[int(local.integers(old_enough))] if old_enough > 0 else None
                if round_ % 2 == 0 and old is not None:
                    status, data = request(connection, "predict evicted id", f"/tasks/{old}/predict", body, kind)
                    if status != 404:
                        errors.append(f"evicted id answered {status}")
        except Exception as exc:  # a client that dies is counted, never hidden
            errors.append(f"client {number}: {type(exc).__name__}: {exc}")
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    # Warm: the cache full (its memory is the server's steady state) and at least 10 s in.
    while time.monotonic() - started < min(10.0, seconds / 6) or len(created) < max_tasks + 2 * clients:
        time.sleep(0.5)
    warm.set()
    warm_at = time.monotonic()
    rss_warm = rss_mb(server.pid)
    rss_samples = [rss_warm]
    while any(t.is_alive() for t in threads):
        time.sleep(2)
        rss_samples.append(rss_mb(server.pid))
    for thread in threads:
        thread.join()
    measured = time.monotonic() - warm_at
    rss_end = rss_mb(server.pid)
    health_connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    health_connection.request("GET", "/health")
    health = json.loads(health_connection.getresponse().read())
    server.terminate()
    server.wait(30)
    counted = sum(len(v) for v in latencies.values())
    return {
        "latencies": latencies,
        "statuses": statuses,
        "errors": errors,
        "seconds": time.monotonic() - started,
        "measured_seconds": measured,
        "throughput": counted / measured,
        "rss_warm": rss_warm,
        "rss_end": rss_end,
        "rss_max": max(rss_samples),
        "created": len(created),
        "health": health,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-tasks", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-out/serve"))
    parser.add_argument(
        "--compiled",
        choices=("mlp", "all", "none"),
        default="mlp",
        help="models also measured with compiled adaptation (compiling the Conv-4's 10-step loop takes over 20 min)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # as each of maml-serve's workers
    cpu = platform.processor() or platform.machine()
    lines = [
        f"{provenance(0, torch.get_num_threads())} "  # the checkpoints and tasks are seeded 0
        f"{os.cpu_count()} CPUs ({cpu}), load average {os.getloadavg()[0]:.2f} at start",
        "",
        "| model | measure | p50 ms | p99 ms | target | met |",
        "|---|---|---|---|---|---|",
    ]
    print(lines[0], flush=True)
    omniglot = write_checkpoint(args.out / "omniglot_5w1s.pt", "omniglot_5w1s", OMNIGLOT)
    sinusoid = write_checkpoint(args.out / "sinusoid.pt", "sinusoid_maml_paper", SINUSOID)
    compile_times = []
    for name, path, support, classification, target in (
        ("Conv-4 Omniglot 5-way 1-shot", omniglot, 5, True, 50.0),
        ("MLP sinusoid 10-shot", sinusoid, 10, False, 5.0),
    ):
        wanted = args.compiled == "all" or (args.compiled == "mlp" and not classification)
        for compiled in (False, True) if wanted else (False,):
            times, compile_s = in_process(path, args.tasks, support, classification, compiled)
            how = "compiled" if compiled else "eager"
            if compiled:
                compile_times.append(f"{name}: compiling the 10-step adaptation took {compile_s:.1f} s")
            for measure, ms in times.items():
                p50, p99 = percentiles(ms)
                goal = f"p99 <= {target:g}" if measure == "adapt + predict 1" else ""
                met = ("yes" if p99 <= target else "no") if goal else ""
                lines.append(f"| {name}, {how} | {measure} | {p50:.2f} | {p99:.2f} | {goal} | {met} |")
            print("\n".join(lines[-4:]), flush=True)
    lines += ["", *compile_times, arithmetic_bound(omniglot, 5)]

    result = load_test(omniglot, args.clients, args.seconds, args.max_tasks, args.workers)
    lines += [
        "",
        f"maml-serve (Conv-4 Omniglot 5-way 1-shot, 10 steps), workers={args.workers}, max_tasks={args.max_tasks}, "
        f"{args.clients} client threads in this process for {result['seconds']:.0f} s, measured after warm-up for "
        f"{result['measured_seconds']:.0f} s",
        provenance(0, "1 thread per worker"),  # maml-serve sets one per worker
        "",
        "| request | count | p50 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for kind, ms in result["latencies"].items():
        if ms:
            p50, p99 = percentiles(ms)
            lines.append(f"| {kind} | {len(ms)} | {p50:.1f} | {p99:.1f} |")
    fivexx = sum(n for status, n in result["statuses"].items() if status >= 500)
    lines += [
        "",
        f"throughput {result['throughput']:.1f} requests/s; statuses {dict(sorted(result['statuses'].items()))}; "
        f"5xx: {fivexx}; client errors: {len(result['errors'])}"
        + (f" (first: {result['errors'][0]})" if result["errors"] else ""),
        f"server RSS after warm-up {result['rss_warm']:.0f} MB, at the end {result['rss_end']:.0f} MB, "
        f"max {result['rss_max']:.0f} MB; {result['created']} tasks created; /health at the end {result['health']}",
    ]
    probe = burst(omniglot, args.clients, max_queue=4)
    lines += [
        "",
        f"back-pressure: {args.clients} task creations at once on workers=1 max_queue=4: statuses {probe['statuses']}, "
        f"each 503 with Retry-After, answered in {probe['refused_p50_ms']:.1f} ms (p50)",
    ]
    text = "\n".join(lines)
    print(text[text.index("maml-serve (") :] if "maml-serve (" in text else text)
    (args.out / "bench_serve.md").write_text(text + "\n")
    print(f"\nwrote {args.out / 'bench_serve.md'}")


if __name__ == "__main__":
    main()
