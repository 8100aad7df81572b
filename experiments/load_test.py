"""Load and concurrency test of POST /api/predict over loopback, under gunicorn.

    python -m experiments.load_test --workdir checkpoints/fast             # 32 clients for 60 s: ~2 min
    python -m experiments.load_test --workdir checkpoints/fast --smoke     # seconds; what CI runs

Starts `gunicorn -w 2 "webui:create_app()"` on a free loopback port, then
1. correctness: --check MNIST test digits (1,000) sent at once by --clients clients; each answer
   is compared with the one computed in this process for that digit: the 28x28 input the server
   echoes, the label and the probabilities. A mix-up between concurrent requests cannot pass.
2. load: --clients clients (32), each sending digits one request after another, for --warmup
   seconds and then --seconds more (60). Every answer is checked the same way.
   Reports requests/s, p50 and p99 latency, and the servers' memory (RSS of the gunicorn master
   and workers) after the warm-up and at the end: at most 10% growth for runs of 30 s or more.
Bounded in count and time; stops the server when done; exits 1 on any error.

Measured: see experiments/RESULTS.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from experiments.bench_serve import _post, gunicorn


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the gunicorn workers), MB."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return 0.0
    total = 0.0
    for p in [pid, *map(int, children)]:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def expected_answers(workdir: str, images_NxHxW: np.ndarray) -> tuple[list, list]:
    """What the server must answer for each image: its 28x28 input and its probabilities."""
    from digitjax.canvas import preprocess
    from digitjax.runs import checkpoint
    from webui.serving import Predictor

    predict = Predictor(checkpoint.load_for_inference(workdir).model, index=None, k=0)
    inputs, probabilities = [], []
    for image in images_NxHxW:
        prepared = preprocess.to_mnist(image.astype(np.float32))
        inputs.append(prepared.image_28x28.tolist())
        probabilities.append(predict(prepared.image_28x28[None])["probabilities"][0])
    return inputs, probabilities


def main() -> None:
    parser = argparse.ArgumentParser(description="Load and concurrency test of /api/predict under gunicorn.")
    parser.add_argument("--workdir", default="checkpoints/fast")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--check", type=int, default=1000, help="digits in the concurrent correctness check")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of load before memory is measured")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of measured load")
    parser.add_argument("--smoke", action="store_true", help="8 clients, 200 digits, 3 s; for CI")
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.check, args.warmup, args.seconds = 8, 200, 1.0, 3.0

    from absl import logging

    from digitjax import data

    logging.set_verbosity(logging.ERROR)  # orbax notes that it opened the run read-only
    test = data.load("mnist", "test")
    images = test.images_NxHxW[: args.check]
    inputs, probabilities = expected_answers(args.workdir, images)
    bodies = [json.dumps({"pixels": image.ravel().tolist()}).encode() for image in images]

    def wrong(i: int, status: int, payload: dict) -> str | None:
        if status != 200:
            return f"digit {i}: status {status}: {payload.get('error')}"
        if payload["input"] != inputs[i]:
            return f"digit {i}: answered for another image"
        if payload["label"] != int(np.argmax(probabilities[i])):
            return f"digit {i}: label {payload['label']}, expected {int(np.argmax(probabilities[i]))}"
        if not np.allclose(payload["probabilities"], probabilities[i], atol=1e-4):
            return f"digit {i}: probabilities differ"
        return None

    with gunicorn(args.workdir, args.workers) as (port, server):

        def check(i: int) -> str | None:
            try:
                status, payload, _ = _post(port, bodies[i])
            except OSError as e:
                return f"digit {i}: {e}"
            return wrong(i, status, payload)

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            mistakes = [m for m in pool.map(check, range(len(bodies))) if m]
        check_s = time.perf_counter() - started

        latencies_ms: list[float] = []
        errors: list[str] = []
        measuring = threading.Event()

        def client(seed: int, stop: float) -> None:
            rng = np.random.default_rng(seed)
            while time.perf_counter() < stop:
                i = int(rng.integers(len(bodies)))
                try:
                    status, payload, ms = _post(port, bodies[i])
                except OSError as e:
                    errors.append(f"digit {i}: {e}")
                    continue
                if problem := wrong(i, status, payload):
                    errors.append(problem)
                elif measuring.is_set():
                    latencies_ms.append(ms)

        stop = time.perf_counter() + args.warmup + args.seconds
        threads = [threading.Thread(target=client, args=(c, stop)) for c in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.warmup)
        rss_warm, measuring_since = rss_mb(server.pid), time.perf_counter()
        measuring.set()
        samples = []
        while time.perf_counter() < stop - 0.5:
            time.sleep(min(5.0, max(stop - 0.5 - time.perf_counter(), 0)))
            samples.append(round(rss_mb(server.pid), 1))
        for t in threads:
            t.join()
        measured_s = time.perf_counter() - measuring_since
        rss_end = rss_mb(server.pid)

    import jax

    growth = rss_end / rss_warm - 1
    report = {
        "workdir": args.workdir,
        "gunicorn_workers": args.workers,
        "clients": args.clients,
        "check_requests": len(bodies),
        "check_wrong": len(mistakes),
        "check_seconds": round(check_s, 2),
        "load_seconds": round(measured_s, 1),
        "load_requests": len(latencies_ms),
        "load_errors": len(errors),
        "requests_per_s": round(len(latencies_ms) / measured_s, 1),
        "p50_ms": round(float(np.percentile(latencies_ms, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies_ms, 99)), 1),
        "rss_mb_after_warmup": round(rss_warm, 1),
        "rss_mb_end": round(rss_end, 1),
        "rss_growth": round(growth, 4),
        "rss_mb_samples": samples,
        "cpu_cores": os.cpu_count(),
        "jax": jax.__version__,
    }
    print(
        f"correctness: {len(bodies)} digits from {args.clients} concurrent clients in {check_s:.1f} s, "
        f"{len(mistakes)} wrong"
    )
    print(
        f"load: {args.clients} clients, {args.workers} gunicorn workers, {measured_s:.0f} s after {args.warmup:.0f} s "
        f"of warm-up: {len(latencies_ms)} requests ({report['requests_per_s']:.0f}/s), {len(errors)} errors, "
        f"p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms"
    )
    print(
        f"memory (gunicorn master + workers): {rss_warm:.0f} MB after warm-up, "
        f"{rss_end:.0f} MB at the end ({growth:+.1%})"
    )
    for message in (mistakes + errors)[:10]:
        print("  " + message, file=sys.stderr)
    print(json.dumps(report))
    flat = growth <= 0.10 or args.seconds < 30  # short runs measure the allocator's warm-up, not a leak
    if mistakes or errors or not flat:
        sys.exit(1)


if __name__ == "__main__":
    main()
