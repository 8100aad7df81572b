"""Training and inference speed of a config's model on this machine, as a table and one JSON line.

    python -m digitjax.tools.bench --config experiments/seed.py                      # ~1 min on 2 CPU cores
    python -m digitjax.tools.bench --config experiments/seed.py --config.conv=xla    # another route
    python -m digitjax.tools.bench --config experiments/seed.py --baseline --peers   # side by side
    python -m digitjax.tools.bench --config experiments/seed.py --smoke              # seconds, for CI

Times the trainer's own `train_steps` (the config's step: its augmentation and weight average;
the dataset on the device, `steps_per_dispatch` steps a dispatch; a plain jitted step where that
is 1, as in `baseline_config`) on random uint8 images
of MNIST's shape, compile time apart, the faster of two timings; the share of the machine's measured
fp32 matmul peak that one training step reaches (FLOPs from XLA's cost analysis of the step with
direct convolutions: Winograd executes fewer, and XLA counts none in oneDNN's); and batched
inference. Records the JAX version, device kind and core count with the figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from flax import nnx
from ml_collections import config_flags

from digitjax import model as model_lib
from digitjax import trainer
from digitjax.ops import conv, onednn
from digitjax.runs import metrics
from digitjax.state import TrainState
from digitjax.train import EXPERIMENTS


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


def baseline_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The plain Flax NNX way digitjax started from, as a config: XLA's own convolutions and one
    jitted dispatch per step."""
    baseline = ml_collections.ConfigDict(config.to_dict())
    baseline.conv, baseline.steps_per_dispatch = "xla", 1
    return baseline


def synthetic_run(config, n: int = 60000) -> tuple[TrainState, trainer.TrainingSet, trainer.Options]:
    """Random uint8 images and labels of MNIST's shape on the device in the epoch's batch order, and
    a fresh state and the step options of `config`: what `trainer.train_steps` takes."""
    rng = np.random.default_rng(0)
    images, labels = jax.device_put((rng.integers(0, 256, (n, 28, 28), np.uint8), rng.integers(0, 10, n, np.int32)))
    steps_per_epoch = n // config.batch_size
    state, _ = trainer.create_train_state(config, steps_per_epoch * config.num_epochs, images)
    order = jnp.arange(steps_per_epoch * config.batch_size).reshape(steps_per_epoch, config.batch_size)
    state.model.train()
    return state, trainer.TrainingSet(images, labels, order), trainer.Options.from_config(config)


def step_flops(state: TrainState, batches: trainer.TrainingSet, options: trainer.Options) -> float:
    lowered = trainer.lower_train_steps(state, batches, jax.random.key(0), options)
    return lowered.compile().cost_analysis()["flops"]


def dispatches(first: int, steps: int, per_dispatch: int, steps_per_epoch: int) -> list[tuple[int, int]]:
    """(batch index in the epoch, step count) of each dispatch for `steps` steps from step `first`:
    none crosses the end of an epoch, as in the trainer, so no batch index runs past the epoch's."""
    out, step = [], first
    while step < first + steps:
        index = step % steps_per_epoch
        count = min(per_dispatch, first + steps - step, steps_per_epoch - index)
        out.append((index, count))
        step += count
    return out


def time_training(config, state, batches, options, steps: int) -> tuple[float, list[float]]:
    """Compile seconds and the seconds of each of two timed runs of `steps` steps, `steps_per_dispatch`
    of them a dispatch (a plain jitted step for one); the faster run is the figure, as for the
    peers (`run_peer`): this machine's speed moves."""
    key, steps_per_epoch = jax.random.key(0), len(batches.order_SxB)

    def run(first, count):
        for index, k in dispatches(first, count, config.steps_per_dispatch, steps_per_epoch):
            if config.steps_per_dispatch == 1:
                trainer.train_step(state, batches, index, key, options)
            else:
                trainer.train_steps(state, batches, index, k, key, options)
        jax.block_until_ready(nnx.state(state.optimizer))

    start = time.perf_counter()
    run(0, 1)
    compile_s = time.perf_counter() - start
    run(1, 2)  # one warm call
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        run(3, steps)
        seconds.append(time.perf_counter() - start)
    return compile_s, seconds


def inference_images_per_s(model: nnx.Module, images_NxHxW: jax.Array, batch: int = 1000, reps: int = 5) -> float:
    model.eval()
    predict = nnx.jit(lambda m, x: m(model_lib.to_input(x)).argmax(-1))
    images = images_NxHxW[:batch]
    predict(model, images).block_until_ready()
    start = time.perf_counter()
    for _ in range(reps):
        out = predict(model, images)
    out.block_until_ready()
    return batch * reps / (time.perf_counter() - start)


def bench(config, steps: int, n: int = 60000, variant: str = "digitjax") -> dict:
    """Times `config`'s training steps and its batched inference; FLOPs and the matmul peak beside."""
    state, batches, options = synthetic_run(config, n)
    compile_s, seconds = time_training(config, state, batches, options, steps)
    train_s = min(seconds)
    images_per_s = steps * config.batch_size / train_s
    # FLOPs of one training step, from XLA's own count of the compiled single step: as executed
    # (oneDNN's custom calls count none), and as the same model with XLA's direct convolutions.
    flops = step_flops(state, batches, options)
    direct = baseline_config(config)
    direct_flops = flops if config.conv == "xla" else step_flops(*synthetic_run(direct, config.batch_size * 2))
    peak = matmul_peak_gflops()
    achieved = flops * steps / train_s / 1e9
    routes = conv.plan(state.model, (config.batch_size, *model_lib.INPUT_SHAPE))
    return {
        "variant": variant,
        "model": config.model,
        "batch_size": config.batch_size,
        "steps_per_dispatch": config.steps_per_dispatch,
        "conv": config.conv,
        "conv_routes": {c.layer: c.route for c in routes},
        "onednn_kernels": {c.layer: c.note for c in routes if c.route == "onednn"},
        "train_images_per_s": images_per_s,
        "images_per_s_of_each_run": [steps * config.batch_size / s for s in seconds],
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
        "inference_images_per_s": inference_images_per_s(state.model, batches.images_NxHxW),
        "jax": jax.__version__,
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "cpu_cores": os.cpu_count(),
        "cpu_isa": cpu_isa(),
    }


def cpu_isa() -> dict:
    """What the CPU offers and the caps in force: the routes' speed depends on them."""
    flags = set()
    with contextlib.suppress(OSError):
        flags = set(next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split())
    return {
        "avx512f": "avx512f" in flags,
        "avx2": "avx2" in flags,
        "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
        "onednn_block": onednn.block() if onednn.available() else None,
    }


def with_frequent_evals(config, per_epoch: int = 10) -> ml_collections.ConfigDict:
    """`config` evaluated `per_epoch` times an epoch, unless it sets its own `eval_every_steps`:
    epoch ends alone cannot show when a run of an epoch or two crosses 99%."""
    config = ml_collections.ConfigDict(config.to_dict())
    if not config.get("eval_every_steps"):
        num_train = config.train_size or 60000 - config.validation_size
        config.eval_every_steps = max(1, num_train // config.batch_size // per_epoch)
    return config


def machine() -> str:
    """The CPU model, its cores and the ISA caps in force, or the accelerator: a result's context."""
    if jax.default_backend() != "cpu":
        return f"{jax.device_count()}x {jax.devices()[0].device_kind}"
    model = "unknown CPU"
    with contextlib.suppress(OSError, StopIteration):
        model = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("model name")).split(":", 1)[1].strip()
    isa = cpu_isa()
    family = "AVX-512" if isa["avx512f"] else "AVX2" if isa["avx2"] else "no AVX2"
    capped = "AVX2" in f"{isa['ONEDNN_MAX_CPU_ISA']} {isa['XLA_FLAGS']}".upper() and isa["avx512f"]
    return f"{model}, {os.cpu_count()} cores, {family}" + (" capped to AVX2" if capped else "")


def cpu_times() -> list[int]:
    """The machine's CPU time counters (/proc/stat's `cpu` line: user ... steal), [] where unreadable."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        return [int(v) for v in next(ln for ln in open("/proc/stat") if ln.startswith("cpu ")).split()[1:9]]
    return []


def steal_share(before: list[int], after: list[int]) -> float | None:
    """The share of CPU time the hypervisor took between two `cpu_times()`: on a shared virtual
    machine the same run's seconds move with it, so results carry it."""
    if not before or not after or sum(after) == sum(before):
        return None
    return (after[7] - before[7]) / (sum(after) - sum(before))


def time_to_accuracy(config) -> dict:
    """Trains the recipe on MNIST (a temporary workdir) with the trainer itself, evaluating it a
    tenth of an epoch apart (`with_frequent_evals`); training seconds (compiling and evaluating
    excluded) to each of metrics.TARGETS."""
    import tempfile
    from pathlib import Path

    from absl import logging

    logging.set_verbosity(logging.ERROR)
    config = with_frequent_evals(config)
    before = cpu_times()
    with tempfile.TemporaryDirectory() as workdir:
        result = trainer.train_and_evaluate(config, Path(workdir))
        records = metrics.read(workdir)
    return {
        "final_test_accuracy": result["test_accuracy"],
        "train_seconds": result["train_seconds"],
        "train_compile_s": result["compile_seconds"],
        "eval_every_steps": config.eval_every_steps,
        "evaluations": sum(r["split"] == "test" for r in records),
        "machine": machine(),
        "cpu_steal": steal_share(before, cpu_times()),
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
        proc = subprocess.run(command, cwd=EXPERIMENTS.parent, capture_output=True, text=True)
        if proc.returncode:
            reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"skipping {peer}: {reason}")
            return []
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best = max(results, key=lambda r: r["train_images_per_s"])
    return [best | {"images_per_s_of_each_run": [r["train_images_per_s"] for r in results]}]


# Flags of their own (the trainer's module defines --config too).
FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    str(EXPERIMENTS / "seed.py"),
    "Config file; fields can be overridden, e.g. --config.conv=xla.",
    flag_values=FLAGS,
)
_STEPS = flags.DEFINE_integer("steps", 100, "Timed training steps.", flag_values=FLAGS)
_SMOKE = flags.DEFINE_bool("smoke", False, "A few steps only, to check it runs.", flag_values=FLAGS)
_BASELINE = flags.DEFINE_bool(
    "baseline", False, "Also time the baseline config: conv=xla, one step a dispatch.", flag_values=FLAGS
)
_PEERS = flags.DEFINE_bool(
    "peers", False, "Also time the seed model in PyTorch and Keras, best of 2 runs each.", flag_values=FLAGS
)
_ACCURACY = flags.DEFINE_bool(
    "accuracy", False, "Also train the recipe on MNIST: time to 99.0% and 99.5%.", flag_values=FLAGS
)


def main(argv: list[str]) -> None:
    if {"-h", "--help", "--helpfull"} & set(argv[1:]):  # its own flag set has no absl help flags
        print(f"{__doc__}\n{FLAGS.get_help()}")
        return
    try:
        FLAGS(argv)
        config = _CONFIG.value
    except (flags.Error, AttributeError, KeyError, OSError) as e:
        sys.exit(
            f"{e}\nusage: python -m digitjax.tools.bench --config experiments/seed.py [--config.conv=xla] [--steps N] "
            "[--baseline] [--peers] [--accuracy] [--smoke]"
        )
    steps = 4 if _SMOKE.value else _STEPS.value
    results = [bench(baseline_config(config), steps, variant="baseline")] if _BASELINE.value else []
    results.append(bench(config, steps))
    if _ACCURACY.value:
        results[-1] |= time_to_accuracy(config)
    if _PEERS.value:
        for peer in ("torch_seed", "keras_seed"):  # optional extras: skipped when not installed
            results += run_peer(peer, config.batch_size, steps)
    print_table(results)
    for r in results:
        print(json.dumps(r))


def print_table(results: list[dict]) -> None:
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
        f"conv={r['conv']}: " + ", ".join(f"{k} {v}" for k, v in r["conv_routes"].items()) + "; "
        f"{r['step_gflop']:.2f} GFLOP per step executed by XLA (none counted in oneDNN's calls), "
        f"{r['direct_conv_step_gflop']:.2f} with direct convolutions (eff. % counts those); "
        f"{r['achieved_gflops']:.1f} GFLOP/s of a measured "
        f"{r['matmul_peak_gflops']:.0f} GFLOP/s fp32 matmul peak; jax {r['jax']} on {r['devices']}x "
        f"{r['device_kind']}, {r['cpu_cores']} cores, {r['cpu_isa']}"
    )
    if "final_test_accuracy" in r:
        reached = {t: r[f"seconds_to_{t:.1%}"] for t in metrics.TARGETS}
        print(
            f"trained on MNIST: test accuracy {r['final_test_accuracy']:.2%} after {r['train_seconds']:.1f} s of "
            f"training ({r['train_compile_s']:.1f} s compiling apart); tested every {r['eval_every_steps']} steps, "
            f"{r['evaluations']} times: "
            + "; ".join(f"{t:.1%} after {'(not reached)' if s is None else f'{s:.1f} s'}" for t, s in reached.items())
            + f"; on {r['machine']}"
            + ("" if r["cpu_steal"] is None else f", {r['cpu_steal']:.0%} of the CPU time stolen by the hypervisor")
        )


if __name__ == "__main__":
    main(sys.argv)
