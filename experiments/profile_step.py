"""Where a recipe's training step spends its time: a JAX profiler trace, summed by operation.

    python -m experiments.profile_step --config experiments/seed.py [--steps 50] [--top 15]

Traces `trainer.train_steps` (compiled and warmed up first) on random images, writes the trace
under --out (open it in Perfetto or TensorBoard), and prints the operations that took the
most device time (GPU kernels on a GPU, XLA's thunks on a CPU) with their share.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
from pathlib import Path

import jax
from flax import nnx

from digitjax import trainer
from digitjax.tools import bench


def device_events(trace: dict) -> list[dict]:
    """Complete events on device threads: GPU streams when there are any, else XLA's CPU ops."""
    names = {
        (e["pid"], e.get("tid")): e["args"]["name"]
        for e in trace["traceEvents"]
        if e.get("ph") == "M" and e.get("name") in ("thread_name", "process_name") and "args" in e
    }
    processes = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "process_name"}
    complete = [e for e in trace["traceEvents"] if e.get("ph") == "X" and "dur" in e]
    gpu = [
        e
        for e in complete
        if "/device:GPU" in processes.get(e["pid"], "") and "Stream" in names.get((e["pid"], e.get("tid")), "")
    ]
    if gpu:
        return gpu
    return [e for e in complete if "hlo_op" in e.get("args", {}) or e.get("args", {}).get("hlo_module")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", default="/tmp/digitjax-profile")
    args = parser.parse_args()
    config = bench.load_config(args.config)
    state, batches, options = bench.synthetic_run(config)

    def run():
        trainer.train_steps(state, batches, 0, args.steps, jax.random.key(0), options)
        jax.block_until_ready(nnx.state(state.optimizer))

    run()  # compile and warm up
    jax.profiler.start_trace(args.out, create_perfetto_trace=True)
    run()
    jax.profiler.stop_trace()
    path = max(Path(args.out).rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    events = device_events(json.loads(gzip.decompress(path.read_bytes())))
    totals: collections.Counter = collections.Counter()
    for e in events:
        totals[e["name"]] += e["dur"]
    whole = sum(totals.values())
    print(f"{config.model}, batch {config.batch_size}, {args.steps} steps on {jax.devices()[0].device_kind}:")
    print(f"{whole / 1e3 / args.steps:.3f} ms of device ops per step; trace: {path}")
    for name, us in totals.most_common(args.top):
        print(f"{100 * us / whole:6.1f}%  {us / 1e3 / args.steps:8.3f} ms/step  {name[:90]}")


if __name__ == "__main__":
    main()
