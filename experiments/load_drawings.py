"""The drawings store under load, and under a kill: nothing acknowledged is lost or mixed up.

    python -m experiments.load_drawings --workdir checkpoints/fast            # 32 clients, 2,000 drawings
    python -m experiments.load_drawings --workdir checkpoints/fast --smoke    # 8 clients, 200; for CI

Serves the run with `gunicorn -w 2 --threads 4` and a new store (its per-client rate limit lifted:
every client here is one loopback address), then:
1. 32 clients POST 2,000 distinct canvas drawings (MNIST test digits, pasted at random sizes and
   places), each with a random label. Every acknowledged drawing (201) must be in the store
   exactly once, with its own label, its own PNG byte for byte, and the input its PNG makes.
   Once half are acknowledged, `python -m digitjax.canvas.drawings backup` copies the store while
   the load goes on: the copy must pass `PRAGMA integrity_check` and hold every drawing
   acknowledged before the backup started, the same way.
2. 32 clients POST again; once half are acknowledged, the server (master and workers) is
   SIGKILLed mid-load. Every
   drawing acknowledged before the kill must be in the store, which must pass SQLite's
   `PRAGMA integrity_check`.
Prints one JSON line; exits non-zero on any mix-up or loss.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import http.client
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from experiments.bench_serve import gunicorn
from experiments.parity import paste_on_canvas


def canvases(images_NxHxW: np.ndarray, n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(paste_on_canvas(images_NxHxW[i % len(images_NxHxW)], rng)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def post(port: int, png: bytes, label: int) -> int | None:
    """The stored drawing's id, or None if the server did not acknowledge it."""
    body = json.dumps({"image": base64.b64encode(png).decode(), "label": label, "kind": "mouse"})
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/api/drawings", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = json.loads(response.read())
        return payload["id"] if response.status == 201 and payload["label"] == label else None
    except (OSError, http.client.HTTPException, ValueError):
        return None


def load(port: int, pngs: list[bytes], labels: np.ndarray, clients: int, acknowledged: dict, stop=None) -> dict:
    """POSTs every drawing from `clients` threads (until `stop` is set); fills and returns
    `acknowledged`, {id: index} of the drawings the server acknowledged."""

    def send(i: int):
        if stop is not None and stop.is_set():
            return
        if (drawing_id := post(port, pngs[i], int(labels[i]))) is not None:
            if drawing_id in acknowledged:
                raise AssertionError(f"id {drawing_id} acknowledged twice")
            acknowledged[drawing_id] = i

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, range(len(pngs))))
    return acknowledged


def check(store: Path, pngs: list[bytes], labels: np.ndarray, acknowledged: dict[int, int]) -> dict:
    """Each acknowledged drawing once, with its label, its PNG and the input that PNG makes."""
    from digitjax.canvas import preprocess

    conn = sqlite3.connect(store)
    rows = {r[0]: r[1:] for r in conn.execute("SELECT id, label, png, input FROM drawings")}
    missing = [i for i in acknowledged if i not in rows]
    wrong = []
    for drawing_id, i in acknowledged.items():
        if drawing_id not in rows:
            continue
        label, png, input_bytes = rows[drawing_id]
        expected = preprocess.to_mnist(Image.open(io.BytesIO(pngs[i]))).image_28x28.tobytes()
        if label != labels[i] or png != pngs[i] or input_bytes != expected:
            wrong.append(drawing_id)
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    return {
        "stored": len(rows),
        "acknowledged": len(acknowledged),
        "missing": len(missing),
        "wrong": len(wrong),
        "integrity": integrity,
    }


def backup_halfway(store: Path, acknowledged: dict, half: int, result: dict) -> threading.Thread:
    """Once `half` drawings are acknowledged: the store's backup, by the operator's command, mid-load."""

    def run():
        while len(acknowledged) < half:
            time.sleep(0.001)
        result["before"] = dict(acknowledged)
        out = store.with_name("backup.sqlite")
        start = time.perf_counter()
        command = [sys.executable, "-m", "digitjax.canvas.drawings", "backup", "--store", str(store), "--out", str(out)]
        result["proc"] = subprocess.run(command, capture_output=True, text=True)
        result["seconds"], result["during"], result["out"] = time.perf_counter() - start, len(acknowledged), out

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def main() -> None:
    from absl import logging

    from digitjax import data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="checkpoints/fast")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--drawings", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="8 clients, 200 drawings; for CI")
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.drawings = 8, 200
    logging.set_verbosity(logging.ERROR)

    images = data.load("mnist", "test").images_NxHxW
    rng = np.random.default_rng(0)
    first, second = canvases(images, args.drawings, 1), canvases(images[::-1], args.drawings, 2)
    labels1, labels2 = rng.integers(0, 10, args.drawings), rng.integers(0, 10, args.drawings)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "drawings.sqlite"
        unlimited = {"DIGITJAX_DRAWINGS_DB": str(store), "DIGITJAX_DRAWINGS_RATE_LIMIT": "null"}
        with gunicorn(args.workdir, workers=2, threads=4, **unlimited) as (port, server):
            start, acknowledged, copy = time.perf_counter(), {}, {}
            backing_up = backup_halfway(store, acknowledged, args.drawings // 2, copy)
            load(port, first, labels1, args.clients, acknowledged)
            seconds = time.perf_counter() - start
            backing_up.join()
            under_load = check(store, first, labels1, acknowledged)
            backed_up = check(copy["out"], first, labels1, copy["before"]) if copy["proc"].returncode == 0 else {}
            backed_up |= {"seconds": copy["seconds"], "acknowledged_when_done": copy["during"]}
            stop, before_kill = threading.Event(), {}

            def kill():  # once half the second load is acknowledged: master and workers, mid-request
                while len(before_kill) < args.drawings // 2:
                    time.sleep(0.001)
                os.killpg(server.pid, signal.SIGKILL)
                stop.set()

            threading.Thread(target=kill, daemon=True).start()
            load(port, second, labels2, args.clients, before_kill, stop)
        after_kill = check(store, second, labels2, before_kill)
    report = {
        "workdir": args.workdir,
        "clients": args.clients,
        "load": under_load | {"seconds": seconds, "per_s": len(acknowledged) / seconds},
        "backup": backed_up,
        "kill": after_kill,
    }
    print(
        f"{args.clients} clients, {args.drawings} drawings in {seconds:.1f} s: "
        f"{under_load['acknowledged']} acknowledged, {under_load['stored']} stored, "
        f"{under_load['wrong']} mixed up, {under_load['missing']} missing; a backup halfway through: "
        f"{backed_up.get('stored')} drawings, {backed_up.get('missing')} of the {backed_up.get('acknowledged')} "
        f"acknowledged before it missing, integrity {backed_up.get('integrity')}; SIGKILL halfway through a second "
        f"load: {after_kill['acknowledged']} acknowledged before it, {after_kill['missing']} missing, "
        f"{after_kill['wrong']} mixed up, integrity {after_kill['integrity']}"
    )
    print(json.dumps(report))
    ok = under_load["acknowledged"] == under_load["stored"] == args.drawings and not under_load["wrong"]
    ok = ok and backed_up.get("integrity") == "ok" and backed_up["missing"] == 0 and not backed_up["wrong"]
    ok = ok and not after_kill["missing"] and not after_kill["wrong"] and after_kill["integrity"] == "ok"
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
