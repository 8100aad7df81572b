"""Training and inference speed of a config's model on this machine, as a table and one JSON line.

    python -m digitjax.bench --config experiments/seed.py            # ~1 min on 2 CPU cores
    python -m digitjax.bench --config experiments/seed.py --smoke    # seconds, for CI

Times the trainer's own `train_steps` (the dataset on the device, many steps per dispatch) on
random uint8 images of MNIST's shape, compile time apart; the share of the machine's measured
fp32 matmul peak that one training step reaches (FLOPs from XLA's cost analysis of the step with
direct convolutions: Winograd executes fewer, and XLA counts none in oneDNN's); and batched
inference. Records the JAX version, device kind and core count with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from digitjax import metrics, onednn, train
from digitjax import model as model_lib


def matmul_peak_gflops(n: int = 1024, reps: int = 10) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def load_config(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def synthetic_run(config, n: int = 60000, baseline: bool = False):
    """Random uint8 images and labels of MNIST's shape on the device, the epoch's batch order, and a
    fresh model, optimizer and metrics of `config`: what `train.train_steps` takes.
    baseline: the model with XLA's own convolutions instead of `model.Conv`."""
    rng = np.random.default_rng(0)
    images, labels = jax.device_put((rng.integers(0, 256, (n, 28, 28), np.uint8), rng.integers(0, 10, n, np.int32)))
    steps_per_epoch = n // config.batch_size
    patch_conv = model_lib.Conv
    if baseline:
        model_lib.Conv = nnx.Conv
    try:
        model = model_lib.create(config.model, config.seed)
    finally:
        model_lib.Conv = patch_conv
    tx, _ = train.make_optimizer(config, steps_per_epoch * config.num_epochs)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())
    order = jnp.arange(steps_per_epoch * config.batch_size).reshape(steps_per_epoch, config.batch_size)
    model.train()
    return model, optimizer, metrics, images, labels, order


def step_flops(model, optimizer, metrics, images, labels, order) -> float:
    graphdef, state = nnx.split((model, optimizer, metrics))
    args = (graphdef, None, 0.0, None, state, images, labels, order, 0, 1, jax.random.key(0))
    return train._train_steps.lower(*args).compile().cost_analysis()["flops"]


def bench(config, steps: int, n: int = 60000, baseline: bool = False) -> dict:
    """baseline: the plain Flax NNX way digitjax started from, for comparison: XLA's own
    convolutions and one `nnx.jit` dispatch per step."""
    model, optimizer, metrics, images, labels, order = synthetic_run(config, n, baseline)
    key = jax.random.key(0)

    def run(first, count):
        if baseline:
            for index in range(first, first + count):
                train.train_step(model, optimizer, metrics, None, images, labels, order, index, key)
        else:
            train.train_steps(model, optimizer, metrics, images, labels, order, first, count, key)
        jax.block_until_ready(nnx.state(optimizer))

    start = time.perf_counter()
    run(0, 1)
    compile_s = time.perf_counter() - start
    run(1, 2)  # one warm call
    start = time.perf_counter()
    for first in range(3, 3 + steps, config.steps_per_dispatch):
        run(first, min(config.steps_per_dispatch, 3 + steps - first))
    train_s = time.perf_counter() - start
    images_per_s = steps * config.batch_size / train_s

    # FLOPs of one training step, from XLA's own count of the compiled single step: as executed
    # (oneDNN's custom calls count none), and as the same model with XLA's direct convolutions.
    flops = step_flops(model, optimizer, metrics, images, labels, order)
    direct_flops = flops if baseline else step_flops(*synthetic_run(config, n, baseline=True))
    peak = matmul_peak_gflops()

    model.eval()
    predict = nnx.jit(lambda m, x: m(model_lib.to_input(x)).argmax(-1))
    batch = images[:1000]
    predict(model, batch).block_until_ready()
    start = time.perf_counter()
    for _ in range(5):
        out = predict(model, batch)
    out.block_until_ready()
    inference = 5000 / (time.perf_counter() - start)

    achieved = flops * steps / train_s / 1e9
    return {
        "variant": "baseline" if baseline else "digitjax",
        "model": config.model,
        "batch_size": config.batch_size,
        "steps_per_dispatch": config.steps_per_dispatch,
        "train_images_per_s": images_per_s,
        "seconds_per_epoch": 60000 / images_per_s,
        "compile_s": compile_s,
        "step_gflop": flops / 1e9,
        "achieved_gflops": achieved,
        "matmul_peak_gflops": peak,
        "share_of_matmul_peak": achieved / peak,
        "direct_conv_step_gflop": direct_flops / 1e9,
        # The work of direct convolutions per second, as a share of the peak: comparable across
        # formulations that execute fewer FLOPs for the same step (Winograd).
        "effective_share_of_matmul_peak": direct_flops * steps / train_s / 1e9 / peak,
        "inference_images_per_s": inference,
        "onednn_convolutions": not baseline and onednn.available(),
        "jax": jax.__version__,
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "cpu_cores": os.cpu_count(),
    }


def time_to_accuracy(config) -> dict:
    """Trains the recipe on MNIST (a temporary workdir) with the trainer itself; training seconds
    (compiling and evaluating excluded) to each of metrics.TARGETS, from the per-epoch evaluations."""
    import tempfile
    from pathlib import Path

    from absl import logging

    logging.set_verbosity(logging.ERROR)
    with tempfile.TemporaryDirectory() as workdir:
        result = train.train_and_evaluate(config, Path(workdir))
        records = metrics.read(workdir)
    return {
        "final_test_accuracy": result["test_accuracy"],
        "train_seconds": result["train_seconds"],
        "train_compile_s": result["compile_seconds"],
    } | {f"seconds_to_{t:.1%}": metrics.time_to(records, t) for t in metrics.TARGETS}


def run_peer(peer: str, batch_size: int, steps: int, runs: int = 2) -> list[dict]:
    """Times experiments/peers/<peer>.py in processes of its own and keeps its fastest run: after
    PyTorch in the same process, and in some whole runs of its own (746 against ~1,480 images/s),
    TensorFlow ran at half its speed, one core's worth; a peer's best is the fair comparison."""
    import subprocess
    import sys

    command = [sys.executable, "-m", f"experiments.peers.{peer}", str(batch_size), str(steps)]
    results = []
    for _ in range(runs):
        proc = subprocess.run(command, cwd=train.EXPERIMENTS.parent, capture_output=True, text=True)
        if proc.returncode:
            reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"skipping {peer}: {reason}")
            return []
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best = max(results, key=lambda r: r["train_images_per_s"])
    return [best | {"images_per_s_of_each_run": [r["train_images_per_s"] for r in results]}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(train.EXPERIMENTS / "seed.py"))
    parser.add_argument("--steps", type=int, default=100, help="timed training steps")
    parser.add_argument("--smoke", action="store_true", help="a few steps only, to check it runs")
    parser.add_argument("--baseline", action="store_true", help="also time XLA convs with one dispatch per step")
    parser.add_argument(
        "--peers", action="store_true", help="also time the seed model in PyTorch and Keras, best of 2 runs each"
    )
    parser.add_argument(
        "--accuracy",
        action="store_true",
        help="also train the recipe on MNIST: time to 99.0%% and 99.5%% test accuracy",
    )
    args = parser.parse_args()
    config = load_config(args.config)
    steps = 4 if args.smoke else args.steps
    results = [bench(config, steps, baseline=True)] if args.baseline else []
    results.append(bench(config, steps))
    if args.accuracy:
        results[-1] |= time_to_accuracy(config)
    if args.peers:
        for peer in ("torch_seed", "keras_seed"):  # optional extras: skipped when not installed
            results += run_peer(peer, config.batch_size, steps)
    columns = (
        f"{'batch':>6}{'train img/s':>13}{'s/epoch':>9}{'compile s':>11}{'% peak':>8}{'eff. %':>8}{'infer img/s':>13}"
    )
    print(f"{'variant':<10}{'model':<8}{columns}")
    for r in results:
        print(
            f"{r['variant']:<10}{r['model']:<8}{r['batch_size']:>6}{r['train_images_per_s']:>13.0f}{r['seconds_per_epoch']:>9.1f}"
            f"{r.get('compile_s', float('nan')):>11.1f}{100 * r.get('share_of_matmul_peak', float('nan')):>8.1f}"
            f"{100 * r.get('effective_share_of_matmul_peak', float('nan')):>8.1f}"
            f"{r.get('inference_images_per_s', float('nan')):>13.0f}"
        )
    r = next(r for r in results if r["variant"] == "digitjax")
    print(
        f"{r['step_gflop']:.2f} GFLOP per step executed by XLA"
        f"{' (and convolutions by oneDNN)' if r['onednn_convolutions'] else ''}, "
        f"{r['direct_conv_step_gflop']:.2f} with direct convolutions (eff. % counts those); "
        f"{r['achieved_gflops']:.1f} GFLOP/s of a measured "
        f"{r['matmul_peak_gflops']:.0f} GFLOP/s fp32 matmul peak; jax {r['jax']} on {r['devices']}x "
        f"{r['device_kind']}, {r['cpu_cores']} cores"
    )
    if args.accuracy:
        reached = {t: r[f"seconds_to_{t:.1%}"] for t in metrics.TARGETS}
        print(
            f"trained on MNIST: test accuracy {r['final_test_accuracy']:.2%} after {r['train_seconds']:.1f} s; "
            + "; ".join(f"{t:.1%} after {'(not reached)' if s is None else f'{s:.1f} s'}" for t, s in reached.items())
        )
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
