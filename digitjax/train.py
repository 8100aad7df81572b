"""Trains a model of the zoo on MNIST with jitted Optax steps, checkpointing with Orbax.

    python -m digitjax.train                                  # experiments/default.py -> checkpoints/default
    python -m digitjax.train --config experiments/seed.py --workdir checkpoints/seed --config.num_epochs=3

Re-running a command resumes from the latest checkpoint in its workdir. SIGTERM (or
Ctrl-C) saves a checkpoint at the current step and stops.

Every device of every process trains, data-parallel (digitjax/parallel.py). Several hosts run the
same command, each with its process flags (or none, where JAX finds them, as on Cloud TPU):

    python -m digitjax.train --coordinator_address host0:1234 --num_processes 2 --process_id 0
"""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from digitjax import augment, checkpoint, conv, data, evaluate, onednn, parallel
from digitjax import metrics as metrics_lib
from digitjax import model as model_lib
from digitjax.errors import UserError, exit_on_user_error

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def make_optimizer(
    config: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The config's optimizer and its learning-rate schedule over `total_steps`."""
    schedules = {
        "constant": lambda: optax.constant_schedule(config.learning_rate),
        "onecycle": lambda: optax.cosine_onecycle_schedule(total_steps, config.learning_rate, config.warmup_fraction),
        "cosine": lambda: optax.warmup_cosine_decay_schedule(
            0.0, config.learning_rate, int(config.warmup_fraction * total_steps), total_steps
        ),
    }
    optimizers = {
        "adam": lambda lr: optax.adam(lr),
        "adamw": lambda lr: optax.adamw(lr, weight_decay=config.weight_decay),
        # Keras's rho and epsilon: the seed recipe (lr 1.0) was tuned with them.
        "adadelta": lambda lr: optax.adadelta(lr, rho=0.95, eps=1e-7),
        "sgd": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
    }
    for field, table in (("lr_schedule", schedules), ("optimizer", optimizers)):
        if config[field] not in table:
            raise UserError(f"Unknown {field} {config[field]!r} in the config; choose one of {sorted(table)}.")
    schedule = schedules[config.lr_schedule]()
    return optimizers[config.optimizer](schedule), schedule


def _step(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    metrics: nnx.MultiMetric,
    ema: nnx.Module | None,
    images_NxHxW: jax.Array,
    labels_N: jax.Array,
    order_SxB: jax.Array,
    index: jax.Array,
    dropout_key: jax.Array,
    aug: augment.Augment | None = None,
    ema_decay: float = 0.0,
    batch_sharding: jax.sharding.NamedSharding | None = None,
) -> None:
    """One optimizer step on batch `index` of the epoch's order; data never leaves the device.

    `batch_sharding` splits the batch over a mesh (`parallel.split()`): data parallelism.
    """
    batch_B = order_SxB[index]
    labels_B = labels_N[batch_B]
    images_BxHxW = images_NxHxW[batch_B]
    if batch_sharding is not None:
        images_BxHxW = jax.lax.with_sharding_constraint(images_BxHxW, batch_sharding)
        labels_B = jax.lax.with_sharding_constraint(labels_B, batch_sharding)
    # Dropout and augmentation depend only on the run's key and the step, so a resumed run
    # draws the same masks and maps.
    step_key = jax.random.fold_in(dropout_key, optimizer.step[...])
    x_BxHxWx1 = model_lib.to_input(images_BxHxW)
    if aug is not None:
        x_BxHxWx1 = augment.random_maps(jax.random.fold_in(step_key, AUGMENT_STREAM), aug, x_BxHxWx1)

    def loss_fn(model):
        logits_BxC = model(x_BxHxWx1, rngs=nnx.Rngs(dropout=step_key))
        return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B).mean(), logits_BxC

    (loss, logits_BxC), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    metrics.update(loss=loss, logits=logits_BxC, labels=labels_B)
    if ema is not None:
        # Short warm-up: early on the average would be mostly the random initialization.
        t = optimizer.step[...].astype(jnp.float32)
        decay = jnp.minimum(ema_decay, (1 + t) / (10 + t))
        average = jax.tree.map(lambda e, p: e + (1 - decay) * (p - e), nnx.state(ema), nnx.state(model))
        nnx.update(ema, average)


AUGMENT_STREAM = 0xA06  # folded into the step key: augmentation draws apart from dropout's
train_step = nnx.jit(_step, static_argnames=("aug", "ema_decay", "batch_sharding"))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3), donate_argnums=4)
def _train_steps(
    graphdef,
    aug,
    ema_decay,
    batch_sharding,
    state,
    images_NxHxW,
    labels_N,
    order_SxB,
    first_index,
    num_steps,
    dropout_key,
):
    def body(i, state):
        model, optimizer, metrics, *ema = nnx.merge(graphdef, state)
        _step(
            model,
            optimizer,
            metrics,
            ema[0] if ema else None,
            images_NxHxW,
            labels_N,
            order_SxB,
            first_index + i,
            dropout_key,
            aug,
            ema_decay,
            batch_sharding,
        )
        return nnx.state((model, optimizer, metrics, *ema))

    state = jax.lax.fori_loop(0, num_steps, body, state)
    # A buffer of its own (the state is donated to the next call), ready when these steps are done.
    return state, jnp.copy(state[1]["step"][...])


def train_steps(
    model,
    optimizer,
    metrics,
    images_NxHxW,
    labels_N,
    order_SxB,
    first_index: int,
    num_steps: int,
    dropout_key,
    ema: nnx.Module | None = None,
    aug: augment.Augment | None = None,
    ema_decay: float = 0.0,
    batch_sharding: jax.sharding.NamedSharding | None = None,
) -> jax.Array:
    """`num_steps` steps from batch `first_index` of the epoch in one dispatch: no host work between
    them, the state's buffers donated and updated in place. Returns the step count after them, an
    array that is ready once they have run."""
    modules = (model, optimizer, metrics) + ((ema,) if ema is not None else ())
    graphdef, state = nnx.split(modules)
    state, done = _train_steps(
        graphdef,
        aug,
        ema_decay,
        batch_sharding,
        state,
        images_NxHxW,
        labels_N,
        order_SxB,
        first_index,
        num_steps,
        dropout_key,
    )
    nnx.update(modules, state)
    return done


def lower_train_steps(model, optimizer, metrics, images_NxHxW, labels_N, order_SxB, dropout_key) -> jax.stages.Lowered:
    """`train_steps`' computation for these arguments, lowered (not run): for its cost analysis and HLO."""
    graphdef, state = nnx.split((model, optimizer, metrics))
    args = (graphdef, None, 0.0, None, state, images_NxHxW, labels_N, order_SxB, 0, 1, dropout_key)
    return _train_steps.lower(*args)


def weight_average(model: nnx.Module) -> nnx.Module:
    """A copy of `model` for `_step` to average the weights into; its own buffers, since both are donated."""
    average = nnx.clone(model)
    nnx.update(average, jax.tree.map(jnp.copy, nnx.state(average)))
    return average


@jax.jit
def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class StopRequest:
    """Turns SIGTERM (preemption notice) and SIGINT into a flag the loop checks between steps."""

    def __init__(self):
        self.signal: int | None = None

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _splits(config: ml_collections.ConfigDict, data_dir: str | None, mnist_dir: str | None):
    """The training split and the evaluated ones (test, and validation when the config holds one out)."""
    train = data.load("train", data_dir, mnist_dir)
    evaluated = {"test": data.load("test", data_dir, mnist_dir)}
    if config.validation_size:
        # TFDS stores the training split shuffled, so its tail is a random held-out slice.
        v = config.validation_size
        evaluated["val"] = data.Split(train.images_NxHxW[-v:], train.labels_N[-v:])
        train = data.Split(train.images_NxHxW[:-v], train.labels_N[:-v])
    if config.train_size:
        train = data.Split(train.images_NxHxW[: config.train_size], train.labels_N[: config.train_size])
    return train, evaluated


def conv_route(config: ml_collections.ConfigDict) -> str:
    return config.get("conv", "auto")  # configs written before the field: auto, as then


def create_model(config: ml_collections.ConfigDict) -> nnx.Module:
    """The config's model with its convolution route; oneDNN's convolutions are built first (with
    a message) where the route may use them, so that no compiler runs while a step is traced."""
    if conv_route(config) in ("auto", "onednn"):
        onednn.prepare()
    return model_lib.create(config.model, config.seed, conv=conv_route(config))


def conv_routes(model: nnx.Module, config: ml_collections.ConfigDict, say=print) -> dict:
    """The route of each convolution in training and in evaluation, by layer, said in one line
    with what the run runs on; it goes into every checkpoint's metadata."""
    plans = {
        "train": conv.plan(model, (config.batch_size, *model_lib.INPUT_SHAPE)),
        "eval": conv.plan(model, (config.eval_batch_size, *model_lib.INPUT_SHAPE)),
    }
    say(
        f"Running on {jax.default_backend()}: {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"{jax.process_count()} process(es); conv={conv_route(config)}: training {conv.summary(plans['train'])}; "
        f"evaluation (batch {config.eval_batch_size}) {conv.summary(plans['eval'])}",
        file=sys.stderr,
    )
    return {split: {c.layer: c.route for c in choices} for split, choices in plans.items()}


def _diverged(what: str, workdir: Path) -> UserError:
    return UserError(
        f"{what}. The run stopped; the last good checkpoint in {workdir} is kept and nothing newer was saved. "
        f"Lower the learning rate or change the recipe, then train into a new --workdir."
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: Path, data_dir: str | None = None, mnist_dir: str | None = None
) -> dict:
    """Trains until `config.num_epochs`, resuming from workdir; returns the last evaluation.

    SIGTERM or SIGINT at any point, loading included, ends it with a checkpoint of the current step.
    """
    with StopRequest() as stop:
        try:
            return _train_and_evaluate(config, workdir, data_dir, mnist_dir, stop)
        except Exception as e:
            if checkpoint.is_out_of_space(e):  # metrics, events or a checkpoint: all in the workdir
                raise checkpoint.out_of_space_error(workdir) from None
            raise


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: Path, data_dir: str | None, mnist_dir: str | None, stop: StopRequest
) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    devices = jax.device_count()
    if config.batch_size % devices:
        raise UserError(
            f"batch_size {config.batch_size} does not split evenly over the {devices} devices of this run; "
            f"pick a multiple of {devices} (--config.batch_size=...)."
        )
    main = parallel.is_main()
    say = tqdm.write if main else lambda *args, **kwargs: None  # one process speaks for all
    train, evaluated = _splits(config, data_dir, mnist_dir)
    eval_sharding = parallel.split() if config.eval_batch_size % devices == 0 else parallel.replicated()
    eval_batches = {
        k: evaluate.batches(s.images_NxHxW, s.labels_N, config.eval_batch_size, eval_sharding)
        for k, s in evaluated.items()
    }
    # The training set lives on the devices, split along its first axis (padded to split evenly;
    # the padding is never drawn). Each step gathers its batch from the shards, split over the mesh.
    images_NxHxW, labels_N = parallel.put(parallel.pad_to_split((train.images_NxHxW, train.labels_N)), parallel.split())
    batch_sharding = parallel.split() if devices > 1 else None
    n, batch_size = len(train.labels_N), config.batch_size
    steps_per_epoch = n // batch_size
    total_steps = config.num_epochs * steps_per_epoch

    model = create_model(config)
    routes = conv_routes(model, config, say)  # before anything is written: a route may be refused
    tx, schedule = make_optimizer(config, total_steps)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    train_metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())
    for module in (model, optimizer, train_metrics):
        nnx.update(module, parallel.put(nnx.state(module), parallel.replicated()))
    # The evaluated (and served) model: an average of the weights when the config keeps one.
    ema_decay = config.get("ema_decay", 0.0)
    ema = weight_average(model) if ema_decay else None
    aug = augment.Augment.from_config(config)
    tta = bool(config.get("test_time_shifts"))
    rng = parallel.put(jax.random.key(config.seed), parallel.replicated())
    ckpts = checkpoint.RunCheckpoints(workdir, config)
    for note in ckpts.notes:
        say(note, file=sys.stderr)
    step = ckpts.latest_step() or 0
    train_s = 0.0  # training wall time: compiling, evaluating and saving excluded
    if step:
        rng, saved_meta = ckpts.restore(step, model, optimizer, rng, ema)
        train_s = saved_meta.get("train_seconds", 0.0)
        say(f"Resuming {workdir} from step {step}.", file=sys.stderr)
    data_key, dropout_key = jax.random.split(rng)
    writer = metrics_lib.MetricWriter(workdir, resume_step=step, enabled=main)
    meta = {
        "model": config.model,
        "device_kind": jax.devices()[0].device_kind,
        "devices": devices,
        "processes": jax.process_count(),
        "jax_version": jax.__version__,
        "conv": conv_route(config),
        "conv_routes": routes,
    }
    bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, mininterval=1.0, disable=not main)
    interval_start = (time.perf_counter(), step)

    def log_train() -> None:
        values = {k: float(v) for k, v in train_metrics.compute().items()}  # the loop's only host sync
        train_metrics.reset()
        if not math.isfinite(values["loss"]):
            raise _diverged(f"The training loss became {values['loss']} by step {step}", workdir)
        values["images_per_s"] = (step - interval_start[1]) * batch_size / (time.perf_counter() - interval_start[0])
        values["learning_rate"] = float(schedule(step))
        writer.write(step, "train", values)
        bar.set_postfix(
            loss=f"{values['loss']:.4f}", acc=f"{values['accuracy']:.4f}", img_s=f"{values['images_per_s']:.0f}"
        )

    def evaluate_epoch() -> dict:
        result = {"step": step, "epoch": step // steps_per_epoch, "train_seconds": train_s}
        for name, batches in eval_batches.items():
            ev = evaluate.evaluate_arrays(ema or model, batches, len(evaluated[name].labels_N), tta)
            result |= {f"{name}_accuracy": ev["accuracy"], f"{name}_loss": ev["loss"]}
            writer.write(step, name, {"accuracy": ev["accuracy"], "loss": ev["loss"], "train_seconds": train_s})
            if name == "test":
                predictions = evaluate.predictions_string(ev["logits_NxC"])
        model.train()
        val = f", validation {result['val_accuracy']:.4%}" if "val_accuracy" in result else ""
        say(f"epoch {result['epoch']}/{config.num_epochs}: test accuracy {result['test_accuracy']:.4%}{val}")
        # Kept with the checkpoint, so a restored model can be checked label for label.
        return result | {"test_predictions": predictions}

    def save(extra: dict | None = None) -> None:
        if ckpts.has(step):
            return
        if not bool(all_finite(nnx.state(model))):
            raise _diverged(f"The parameters became NaN or infinite before step {step}", workdir)
        meta_now = {**meta, "epoch": step / steps_per_epoch, "train_seconds": train_s}
        ckpts.save(step, model, optimizer, rng, meta_now | (extra or {}), ema)

    def stop_clock() -> None:
        """Waits for the dispatched steps and adds their time to train_s."""
        nonlocal train_s
        jax.block_until_ready(nnx.state(optimizer))
        train_s += time.perf_counter() - running_since

    result: dict = {}
    order_SxB = in_flight = None
    stopping = False
    compile_s = running_since = None
    model.train()
    try:
        # A signal that reached one process stops them all at the same step.
        while step < total_steps and not (stopping := parallel.any_process(stop.signal is not None)):
            if order_SxB is None or step % steps_per_epoch == 0:
                order_SxB = data.epoch_order(data_key, step // steps_per_epoch, n, batch_size)
            # Up to the next log, checkpoint or epoch end, in one dispatch.
            periods = (config.log_every_steps, config.checkpoint_every_steps, steps_per_epoch)
            until = min([step + p - step % p for p in periods] + [total_steps, step + config.steps_per_dispatch])
            dispatched = time.perf_counter()
            done = train_steps(
                model,
                optimizer,
                train_metrics,
                images_NxHxW,
                labels_N,
                order_SxB,
                step % steps_per_epoch,
                until - step,
                dropout_key,
                ema,
                aug,
                ema_decay,
                batch_sharding,
            )
            if compile_s is None:  # the first call returns once compiled; the steps run on
                compile_s = time.perf_counter() - dispatched
                running_since = time.perf_counter()
            # At most one dispatch queued behind the running one: the device never waits for the
            # host, and a stop signal waits for two dispatches at most, not for everything queued.
            if in_flight is not None:
                in_flight.block_until_ready()
            in_flight = done
            bar.update(until - step)
            step = until
            end_of_epoch = step % steps_per_epoch == 0
            log_now = end_of_epoch or step % config.log_every_steps == 0
            save_now = end_of_epoch or step % config.checkpoint_every_steps == 0
            if log_now or save_now:  # a sync point anyway: stop the training clock here
                stop_clock()
            if log_now:
                log_train()
            if end_of_epoch:
                result = evaluate_epoch()
                save(result)
            elif save_now:
                save()
            if log_now:
                interval_start = (time.perf_counter(), step)
            if log_now or save_now:
                running_since = time.perf_counter()
        if stopping:
            if compile_s is not None:
                stop_clock()
            save()
            signum = stop.signal or signal.SIGTERM  # another process's
            say(
                f"Stopped by signal {signum} at step {step}: checkpoint saved in {workdir}; "
                "run the same command to resume.",
                file=sys.stderr,
            )
            result["stopped_by"] = signum
        if "step" in result:
            result["compile_seconds"] = compile_s
    finally:
        bar.close()
        try:
            writer.close()
        finally:
            ckpts.close()  # also when the writer fails: it waits for the last save and unlocks the workdir
    return result


_CONFIG = config_flags.DEFINE_config_file(
    "config", str(EXPERIMENTS / "default.py"), "Python file whose get_config() returns the run's ConfigDict."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory; default checkpoints/<config file name>.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).")
_MNIST_DIR = flags.DEFINE_string(
    "mnist_dir", None, "Folder with the four MNIST IDX .gz files (default $DIGITJAX_MNIST_DIR)."
)

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, in a multi-host run (with --num_processes, --process_id)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run, one per host.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run, from 0.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    None,
    "Join a multi-host run whose processes JAX finds by itself. Default: when the environment says there are "
    "several (a multi-host Cloud TPU VM, SLURM with several tasks, JAX_COORDINATOR_ADDRESS).",
)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with config mistakes reported as one line instead of a traceback."""
    with exit_on_user_error():
        try:
            rest = flags.FLAGS(argv)
            _CONFIG.value.to_dict()  # a config file that failed to load raises only when read
            return rest
        except (AttributeError, KeyError) as e:
            # ml_collections: '\'nmu_epochs\'\nDid you mean "num_epochs" instead of "nmu_epochs"?'
            text = str(e).encode().decode("unicode_escape").replace("'", "").replace('"', "")
            field, _, hint = text.partition("\n")
            raise UserError(
                f"Unknown config field {field.strip()!r}. {hint.strip()} The fields and what they mean "
                f"are in experiments/default.py."
            )
        except flags.Error as e:
            raise UserError(f"{e}. See --helpfull for the flags.")
        except OSError as e:
            detail = str(e).splitlines()[-1].strip()
            raise UserError(
                f"Could not load the config file ({detail}). Pass --config with a Python file such as "
                f"experiments/default.py whose get_config() returns a ConfigDict."
            )


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    workdir = Path(
        _WORKDIR.value or Path("checkpoints") / Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
    )
    logging.set_verbosity(logging.ERROR)  # orbax logs every save at INFO and WARNING
    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _DISTRIBUTED.value)
    checkpoint.quiet_failed_saves()
    # Compiled steps persist across runs (a resumed or repeated run skips compiling).
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path("~/.cache/digitjax/xla").expanduser()))
    jax.config.update("jax_compilation_cache_dir", cache)
    started = time.perf_counter()
    with exit_on_user_error():
        result = train_and_evaluate(_CONFIG.value, workdir, _DATA_DIR.value, _MNIST_DIR.value)
    if "stopped_by" in result:
        sys.exit(130 if result["stopped_by"] == signal.SIGINT else 0)
    if not parallel.is_main():
        return
    if result:
        seconds = time.perf_counter() - started
        print(
            f"{workdir}: step {result['step']}, test accuracy {result['test_accuracy']:.4%} "
            f"(training {result['train_seconds']:.1f} s, compiling {result['compile_seconds'] or 0:.1f} s, "
            f"whole command {seconds:.0f} s)"
        )
    else:
        print(
            f"{workdir} has already finished its {_CONFIG.value.num_epochs} epochs; "
            f"evaluate it with `python -m digitjax.evaluate --workdir {workdir}`."
        )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
