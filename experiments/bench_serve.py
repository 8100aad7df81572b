"""Serving speed of POST /api/predict over loopback HTTP, under gunicorn.

    python -m experiments.bench_serve --workdir checkpoints/fast            # ~1 min
    python -m experiments.bench_serve --workdir checkpoints/fast --smoke    # a few seconds

Starts `gunicorn -w 2 "webui:create_app()"` on a free loopback port, then sends a 280x280
canvas PNG of a drawn digit: one client for --requests requests of each kind (p50/p99
latency) - plain (`fields: []`), with saliency (the API's default), and with saliency,
layers and neighbours (what the page asks for while drawing) - then 8 concurrent clients for
--seconds (requests/s, saliency). Prints a table and one JSON line. Bounded in count and time;
stops the server when done. experiments/RESULTS.md has the figures measured.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, body: bytes) -> tuple[int, dict, float]:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/api/predict", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    return response.status, payload, (time.perf_counter() - start) * 1000


def _wait_healthy(port: int, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"gunicorn exited with status {server.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit("the server did not become healthy in time")


@contextlib.contextmanager
def gunicorn(workdir: str, workers: int = 2, threads: int = 1, **env: str):
    """`gunicorn -w WORKERS --threads THREADS "webui:create_app()"` serving `workdir` on a free
    loopback port, with `env` added to its environment; stopped on exit.

    Yields the port and the server's process.
    """
    port = free_port()
    env = {**os.environ, "DIGITJAX_WORKDIR": workdir, "DIGITJAX_CHECKPOINTS": str(Path(workdir).parent), **env}
    # Measured as a person meets it: the neighbours ready before the first request, however long
    # a first embedding of the training set takes (and gunicorn waits that long for its workers).
    env["DIGITJAX_NEIGHBOURS_WAIT_S"] = "600"
    command = ["gunicorn", "--timeout", "600", "-w", str(workers), "--threads", str(threads)]
    command += ["-b", f"127.0.0.1:{port}", "webui:create_app()"]
    server = subprocess.Popen(
        [sys.executable, "-m", *command],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_healthy(port, server)
        yield port, server
    finally:
        if server.poll() is None:  # a test may have killed it already
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def canvas_png() -> bytes:
    """A '7' drawn on a white 280x280 canvas, as the page sends it."""
    from experiments.parity import paste_on_canvas

    digit = np.zeros((28, 28), np.uint8)
    digit[6:9, 7:21] = 255
    for r in range(9, 23):
        digit[r, 19 - (r - 9) // 2 : 22 - (r - 9) // 2] = 255
    buf = io.BytesIO()
    Image.fromarray(paste_on_canvas(digit, np.random.default_rng(0))).save(buf, "PNG")
    return buf.getvalue()


KINDS = {"plain": [], "saliency": ["saliency"], "insight": ["saliency", "layers", "neighbours"]}


def _one_client(port: int, image: str, fields: list[str], requests: int) -> dict:
    body = json.dumps({"image": image, "fields": fields}).encode()
    for _ in range(10):  # warm both workers' connections and caches
        _post(port, body)
    latencies, model_ms = [], []
    for _ in range(requests):
        status, payload, ms = _post(port, body)
        assert status == 200, payload
        latencies.append(ms)
        model_ms.append(payload["model_ms"])
    return {
        "fields": fields,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "model_ms_p50": float(np.percentile(model_ms, 50)),
        "response_bytes": len(json.dumps(payload)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark /api/predict under gunicorn.")
    parser.add_argument("--workdir", default="checkpoints/fast")
    parser.add_argument("--requests", type=int, default=500, help="sequential requests of the one client, per kind")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the 8-client phase")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny counts, for CI")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.seconds = 20, 2.0

    with gunicorn(args.workdir, args.workers) as (port, _):
        image = base64.b64encode(canvas_png()).decode()
        one_client = {kind: _one_client(port, image, fields, args.requests) for kind, fields in KINDS.items()}
        body = json.dumps({"image": image, "fields": ["saliency"]}).encode()

        done, errors, stop = [], [], time.perf_counter() + args.seconds

        def client():
            while time.perf_counter() < stop:
                try:
                    status, _, ms = _post(port, body)
                    (done if status == 200 else errors).append(ms)
                except OSError as e:
                    errors.append(str(e))

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started

    import jax

    report = {
        "workdir": args.workdir,
        "one_client_requests": args.requests,
        "one_client": one_client,
        "concurrent_clients": args.clients,
        "gunicorn_workers": args.workers,
        "concurrent_requests_per_s": len(done) / elapsed,
        "concurrent_p99_ms": float(np.percentile(done, 99)) if done else None,
        "errors": len(errors),
        "cpu_cores": os.cpu_count(),
        "jax": jax.__version__,
    }
    for kind, figures in one_client.items():
        print(
            f"one client, {args.requests} requests, {kind:>8}: p50 {figures['p50_ms']:.1f} ms, "
            f"p99 {figures['p99_ms']:.1f} ms; model {figures['model_ms_p50']:.2f} ms (p50), "
            f"{figures['response_bytes']:,} bytes"
        )
    print(
        f"{args.clients} clients, {args.workers} gunicorn workers, {args.seconds:.0f} s: "
        f"{report['concurrent_requests_per_s']:.0f} requests/s, p99 {report['concurrent_p99_ms']:.1f} ms, "
        f"{len(errors)} errors"
    )
    print(json.dumps(report))
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
