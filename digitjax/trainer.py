"""Training: the jitted steps and the loop that runs, evaluates and saves them.

The recipe's parts each live in one place: the model in `digitjax/model.py`, the optimizer and
schedule in `digitjax/optim.py`, the data in `digitjax/data.py`, the augmentation in
`digitjax/augment.py`, the loss in `digitjax/loss.py`. `python -m digitjax.train` (digitjax/train.py)
parses the flags and calls `train_and_evaluate`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import signal
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from etils import epath
from flax import nnx
from tqdm import tqdm

from digitjax import augment, data, evaluate, optim, whitening
from digitjax import loss as loss_lib
from digitjax import model as model_lib
from digitjax.errors import UserError
from digitjax.ops import conv, onednn
from digitjax.runs import checkpoint as checkpoint_lib
from digitjax.runs import metrics as metrics_lib
from digitjax.runs import parallel, preemption, profiling
from digitjax.runs import workdir as workdir_lib
from digitjax.state import TrainState

# Any constant other than 0 would do: folded into the step key, it gives augmentation random
# draws of its own, independent of dropout's (which use the step key itself).
AUGMENT_STREAM = 0xA06


@dataclasses.dataclass(frozen=True)
class Options:
    """What a step does besides the gradient step; static, so each choice compiles its own step."""

    aug: augment.Augment | None = None  # random maps of the training images; None for none
    ema_decay: float = 0.0  # decay of the weight average in TrainState.ema; 0 when there is none
    batch_sharding: jax.sharding.NamedSharding | None = None  # splits each batch over a mesh
    label_smoothing: float = 0.0  # share of each target spread evenly over the classes

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Options:
        split = parallel.split() if jax.device_count() > 1 else None
        aug = augment.Augment.from_config(config)
        return cls(aug, config.get("ema_decay", 0.0), split, config.get("label_smoothing", 0.0))


class TrainingSet(NamedTuple):
    """The whole training split on the device, and the epoch's order the steps draw their batches in."""

    images_NxHxW: jax.Array  # uint8
    labels_N: jax.Array  # int32
    order_SxB: jax.Array  # example indices of each step's batch (data.epoch_order)


def loss_fn(model: nnx.Module, x_BxHxWx1: jax.Array, labels_B: jax.Array, key: jax.Array, smoothing: float = 0.0):
    """The batch's mean training loss (digitjax/loss.py, with the training-only label smoothing)
    and its logits."""
    logits_BxC = model(x_BxHxWx1, rngs=nnx.Rngs(dropout=key))
    return loss_lib.per_example(logits_BxC, labels_B, smoothing).mean(), logits_BxC


def _apply_step(state: TrainState, train_set: TrainingSet, index: jax.Array, key: jax.Array, options: Options) -> None:
    """One optimizer step on batch `index` of the epoch's order; data never leaves the device."""
    batch_B = train_set.order_SxB[index]
    labels_B = train_set.labels_N[batch_B]
    images_BxHxW = train_set.images_NxHxW[batch_B]
    if options.batch_sharding is not None:
        images_BxHxW = jax.lax.with_sharding_constraint(images_BxHxW, options.batch_sharding)
        labels_B = jax.lax.with_sharding_constraint(labels_B, options.batch_sharding)
    # Dropout and augmentation depend only on the run's key and the step, so a resumed run
    # draws the same masks and maps.
    step_key = jax.random.fold_in(key, state.optimizer.step[...])
    x_BxHxWx1 = model_lib.to_input(images_BxHxW)
    if options.aug is not None:
        aug_key, frame = jax.random.fold_in(step_key, AUGMENT_STREAM), model_lib.ignored_border(state.model)
        x_BxHxWx1 = augment.random_maps(aug_key, options.aug, x_BxHxWx1, frame)
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, logits_BxC), grads = grad_fn(state.model, x_BxHxWx1, labels_B, step_key, options.label_smoothing)
    state.optimizer.update(state.model, grads)
    state.metrics.update(loss=loss, logits=logits_BxC, labels=labels_B)
    if state.ema is not None:
        # Short warm-up: early on the average would be mostly the random initialization.
        t = state.optimizer.step[...].astype(jnp.float32)
        decay = jnp.minimum(options.ema_decay, (1 + t) / (10 + t))
        average = jax.tree.map(lambda e, p: e + (1 - decay) * (p - e), nnx.state(state.ema), nnx.state(state.model))
        nnx.update(state.ema, average)


train_step = nnx.jit(_apply_step, static_argnames="options")
train_step.__doc__ = "One jitted optimizer step: `train_step(state, train_set, index, key, options)`."


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _steps(static: tuple, state: nnx.State, train_set: TrainingSet, first_index, num_steps, key) -> tuple:
    graphdef, options = static

    def body(i, state):
        train_state = nnx.merge(graphdef, state)
        _apply_step(train_state, train_set, first_index + i, key, options)
        return nnx.state(train_state)

    state = jax.lax.fori_loop(0, num_steps, body, state)
    # A buffer of its own (the state is donated to the next call), ready when these steps are done.
    return state, jnp.copy(state["optimizer"]["step"][...])


def train_steps(
    state: TrainState, train_set: TrainingSet, first_index: int, num_steps: int, key: jax.Array, options: Options
) -> jax.Array:
    """`num_steps` steps from batch `first_index` of the epoch in one dispatch: no host work between
    them, the state's buffers donated and updated in place. Returns the step count after them, an
    array that is ready once they have run."""
    graphdef, arrays = nnx.split(state)
    arrays, done = _steps((graphdef, options), arrays, train_set, first_index, num_steps, key)
    nnx.update(state, arrays)
    return done


def lower_train_steps(
    state: TrainState, train_set: TrainingSet, key: jax.Array, options: Options
) -> jax.stages.Lowered:
    """`train_steps`' computation of one step, lowered (not run): for its cost analysis and HLO."""
    graphdef, arrays = nnx.split(state)
    return _steps.lower((graphdef, options), arrays, train_set, 0, 1, key)


def create_model(config: ml_collections.ConfigDict) -> nnx.Module:
    """The config's model with its convolution route; oneDNN's convolutions are built first (with
    a message) where the route may use them, so that no compiler runs while a step is traced."""
    if conv_route(config) in ("auto", "onednn"):
        onednn.prepare()
    return model_lib.create(model_lib.spec_of(config), config.seed, conv=conv_route(config))


def create_train_state(
    config: ml_collections.ConfigDict, total_steps: int, images_NxHxW: jax.Array | None = None
) -> tuple[TrainState, optax.Schedule]:
    """A fresh state of the config's recipe, replicated over the devices, and its learning-rate
    schedule. `images_NxHxW` (the training images) set a whitened conv1; without them it stays
    random until a checkpoint is restored into it."""
    model = create_model(config)
    tx, schedule = optim.make_optimizer(config, total_steps)
    if config.get("whiten_conv1", False):
        if images_NxHxW is not None:
            whitening.whiten_conv1(model, images_NxHxW)
        tx = whitening.frozen_conv1(tx)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())
    nnx.update((model, optimizer, metrics), parallel.put(nnx.state((model, optimizer, metrics)), parallel.replicated()))
    # The evaluated (and served) model: an average of the weights when the config keeps one.
    ema = weight_average(model) if config.get("ema_decay", 0.0) else None
    return TrainState(model, optimizer, metrics, ema), schedule


def weight_average(model: nnx.Module) -> nnx.Module:
    """A copy of `model` for the steps to average the weights into; its own buffers, since both are donated."""
    average = nnx.clone(model)
    nnx.update(average, jax.tree.map(jnp.copy, nnx.state(average)))
    return average


@jax.jit
def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def conv_route(config: ml_collections.ConfigDict) -> str:
    return config.get("conv", "auto")  # configs written before the field: auto, as then


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


class Clock:
    """The run's training wall time: compiling, evaluating and saving excluded."""

    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds
        self.compile_seconds: float | None = None
        self._since: float | None = None

    def dispatched(self, started: float) -> None:
        """After each dispatch: the first returns once compiled, and the steps run on from there."""
        if self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - started
            self._since = time.perf_counter()

    def stop(self, state: TrainState) -> None:
        """Waits for the dispatched steps and adds their time."""
        if self._since is not None:
            jax.block_until_ready(nnx.state(state.optimizer))
            self.seconds += time.perf_counter() - self._since
            self._since = None

    def restart(self) -> None:
        if self.compile_seconds is not None:
            self._since = time.perf_counter()


@dataclasses.dataclass
class Training:
    """One training run as the loop's parts share it."""

    config: ml_collections.ConfigDict
    workdir: epath.Path
    state: TrainState
    options: Options
    schedule: optax.Schedule
    train_set: TrainingSet
    num_train: int  # training images (the device copy is padded to split over the devices)
    evaluations: dict[str, tuple[list, int]]  # split name -> (device batches, images): test, and val if held out
    ckpts: checkpoint_lib.RunCheckpoints
    meta: dict  # what every checkpoint records of the run
    say: Callable
    step: int = 0
    rng: jax.Array | None = None  # the run's base key, saved with every checkpoint
    data_key: jax.Array | None = None  # draws each epoch's order
    dropout_key: jax.Array | None = None  # dropout's, and augmentation's, folded with the step
    writer: metrics_lib.MetricWriter | None = None
    trace: profiling.StepTrace | None = None
    clock: Clock = dataclasses.field(default_factory=Clock)
    log_start: tuple[float, int] = (0.0, 0)  # wall time and step where the logged interval began
    bar: tqdm | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.num_train // self.config.batch_size

    @property
    def total_steps(self) -> int:
        return self.config.num_epochs * self.steps_per_epoch


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | epath.Path,
    paths: data.Paths | None = None,
) -> dict:
    """Trains until `config.num_epochs`, resuming from workdir; returns the last evaluation.

    SIGTERM or SIGINT at any point, loading included, ends it with a checkpoint of the current step.
    """
    workdir = epath.Path(workdir)
    with preemption.StopRequest() as stop, workdir_lib.out_of_space_as_user_error(workdir):
        run = start(config, workdir, paths or data.Paths())
        try:
            return _loop(run, stop)
        finally:
            _close(run)


def start(config: ml_collections.ConfigDict, workdir: epath.Path, paths: data.Paths) -> Training:
    """Loads the data onto the devices, builds the state and resumes it from the workdir's latest checkpoint."""
    workdir_lib.check_ours(workdir)  # before anything is loaded: a foreign folder or a missing bucket
    if config.batch_size % jax.device_count():
        raise UserError(
            f"batch_size {config.batch_size} does not split evenly over the {jax.device_count()} devices of this "
            f"run; pick a multiple of {jax.device_count()} (--config.batch_size=...)."
        )
    say = tqdm.write if parallel.is_main() else lambda *args, **kwargs: None  # one process speaks for all
    train_set, train_images_NxHxW, evaluations = _put_data(config, paths)
    num_train = len(train_images_NxHxW)
    state, schedule = create_train_state(
        config, config.num_epochs * (num_train // config.batch_size), train_images_NxHxW
    )
    routes = conv_routes(state.model, config, say)  # before anything is written: a route may be refused
    if config.get("whiten_conv1", False):
        say(f"conv1: whitened from the first {whitening.NUM_IMAGES:,} training images and frozen (whiten_conv1).")
    ckpts = checkpoint_lib.RunCheckpoints(workdir, config)
    meta = {
        "model": config.model,
        "model_spec": model_lib.spec_of(config).describe(),
        "dataset": data.dataset_of(config),
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "jax_version": jax.__version__,
        "conv": conv_route(config),
        "conv_routes": routes,
    }
    options = Options.from_config(config)
    trace = profiling.StepTrace(tuple(config.get("profile_steps", ())), metrics_lib.tensorboard_dir(workdir))
    run = Training(config, workdir, state, options, schedule, train_set, num_train, evaluations, ckpts, meta, say)
    try:
        _resume(run)
        run.trace = trace
        run.writer = metrics_lib.MetricWriter(workdir, resume_step=run.step, enabled=parallel.is_main())
        run.writer.write_config(config)
        bar = {"unit": "step", "dynamic_ncols": True, "mininterval": 1.0, "disable": not parallel.is_main()}
        run.bar = tqdm(total=run.total_steps, initial=run.step, **bar)
        return run
    except BaseException:
        ckpts.close()  # unlocks the workdir
        raise


def _resume(run: Training) -> None:
    """Restores the workdir's latest checkpoint into the run, if it has one, and derives the run's keys."""
    for note in run.ckpts.notes:
        run.say(note, file=sys.stderr)
    run.rng = parallel.put(jax.random.key(run.config.seed), parallel.replicated())
    run.step = run.ckpts.latest_step() or 0
    if run.step:
        run.rng, saved = run.ckpts.restore(run.step, run.state, run.rng)
        run.clock.seconds = saved.get("train_seconds", 0.0)
        run.say(f"Resuming {run.workdir} from step {run.step}.", file=sys.stderr)
    elif run.config.get("init_from"):
        _init_from(run)
    run.data_key, run.dropout_key = jax.random.split(run.rng)


def _init_from(run: Training) -> None:
    """A fresh run starts from another run's trained model (fine-tuning) rather than at random."""
    source = run.config.init_from
    restored = checkpoint_lib.load_for_inference(source)
    theirs, ours = model_lib.spec_of(restored.config), model_lib.spec_of(run.config)
    if theirs != ours:
        raise UserError(
            f"init_from {source} trained model {theirs.describe()}, this config's is {ours.describe()}; set the "
            f"config's model and model_kwargs to that run's, or init from a run of the same model."
        )
    trained = parallel.put(nnx.state(restored.model), parallel.replicated())
    for module in filter(None, (run.state.model, run.state.ema)):
        nnx.update(module, trained)
    run.say(f"Starting from {source} (step {restored.step}).", file=sys.stderr)


def _put_data(config: ml_collections.ConfigDict, paths: data.Paths):
    """The training split on the devices (`TrainingSet` without an order yet) and its images on the
    host, and the evaluated splits."""
    train, evaluated = data.splits(config, paths)
    sharding = parallel.split() if config.eval_batch_size % jax.device_count() == 0 else parallel.replicated()
    evaluations = {
        name: (evaluate.batches(s.images_NxHxW, s.labels_N, config.eval_batch_size, sharding), len(s.labels_N))
        for name, s in evaluated.items()
    }
    # The training set lives on the devices, split along its first axis (padded to split evenly;
    # the padding is never drawn). Each step gathers its batch from the shards, split over the mesh.
    images, labels = parallel.put(parallel.pad_to_split((train.images_NxHxW, train.labels_N)), parallel.split())
    return TrainingSet(images, labels, None), train.images_NxHxW, evaluations


def _loop(run: Training, stop: preemption.StopRequest) -> dict:
    """Dispatches steps until the last epoch ends or a signal arrives; returns the last evaluation."""
    result, in_flight, stopping = {}, None, False
    run.log_start = (time.perf_counter(), run.step)
    run.state.model.train()
    # A signal that reached one process stops them all at the same step.
    while run.step < run.total_steps and not (stopping := stop.requested()):
        done = _dispatch(run)
        # At most one dispatch queued behind the running one: the device never waits for the
        # host, and a stop signal waits for two dispatches at most, not for everything queued.
        if in_flight is not None:
            in_flight.block_until_ready()
        in_flight = done
        result = _after_dispatch(run) or result
    if stopping:
        result = _stop(run, stop.signal or signal.SIGTERM) | result  # or another process's signal
    if "step" in result:
        result["compile_seconds"] = run.clock.compile_seconds
    return result


def _dispatch(run: Training) -> jax.Array:
    """Steps up to the next log, checkpoint or epoch end (at most `steps_per_dispatch`) in one dispatch."""
    config, step, per_epoch = run.config, run.step, run.steps_per_epoch
    if run.train_set.order_SxB is None or step % per_epoch == 0:
        order_SxB = data.epoch_order(run.data_key, step // per_epoch, run.num_train, config.batch_size)
        run.train_set = run.train_set._replace(order_SxB=order_SxB)
    periods = (config.log_every_steps, config.checkpoint_every_steps, per_epoch, _eval_every(config) or per_epoch)
    ends = [step + p - step % p for p in periods] + [run.total_steps, step + config.steps_per_dispatch]
    until = min(ends + run.trace.boundaries(step))
    run.trace.before_dispatch(step)
    started = time.perf_counter()
    done = train_steps(run.state, run.train_set, step % per_epoch, until - step, run.dropout_key, run.options)
    run.clock.dispatched(started)
    run.trace.after_dispatch(until, done)
    run.bar.update(until - step)
    run.step = until
    return done


def _after_dispatch(run: Training) -> dict | None:
    """Logs, evaluates and saves where the step calls for it; returns the evaluation at an epoch's end."""
    step, config = run.step, run.config
    end_of_epoch = step % run.steps_per_epoch == 0
    log_now = end_of_epoch or step % config.log_every_steps == 0
    save_now = end_of_epoch or step % config.checkpoint_every_steps == 0
    every = _eval_every(config)
    eval_now = end_of_epoch or (every and step % every == 0)
    if not (log_now or save_now or eval_now):
        return None
    run.clock.stop(run.state)  # a sync point anyway: stop the training clock here
    if log_now:
        _log_train(run)
    evaluation = _evaluate(run) if eval_now else None
    if save_now:
        _save(run, evaluation if end_of_epoch else None)
    if log_now:
        run.log_start = (time.perf_counter(), step)
    run.clock.restart()
    return evaluation if end_of_epoch else None  # the loop returns the last epoch end's evaluation


def _eval_every(config: ml_collections.ConfigDict) -> int:
    return config.get("eval_every_steps", 0)  # configs written before the field: epoch ends only


def _log_train(run: Training) -> None:
    """Writes the training metrics since the last log; the loop's only host sync besides saving."""
    values = {k: float(v) for k, v in run.state.metrics.compute().items()}
    run.state.metrics.reset()
    if not math.isfinite(values["loss"]):
        raise _diverged(f"The training loss became {values['loss']} by step {run.step}", run.workdir)
    since, first = run.log_start
    values["images_per_s"] = (run.step - first) * run.config.batch_size / (time.perf_counter() - since)
    values["learning_rate"] = float(run.schedule(run.step))
    run.writer.write(run.step, "train", values)
    run.bar.set_postfix(
        loss=f"{values['loss']:.4f}", acc=f"{values['accuracy']:.4f}", img_s=f"{values['images_per_s']:.0f}"
    )


def _evaluate(run: Training) -> dict:
    """Evaluates the test split (and the validation split) at the current step, and says so."""
    step, seconds = run.step, run.clock.seconds
    result = {"step": step, "epoch": step // run.steps_per_epoch, "train_seconds": seconds}
    where = f"epoch {step / run.steps_per_epoch:.3g}/{run.config.num_epochs}" + (
        f" (step {step}, {seconds:.1f} s of training)" if step % run.steps_per_epoch else ""
    )
    views = augment.TestViews.from_config(run.config)
    for name, (batches, n) in run.evaluations.items():
        ev = evaluate.evaluate_arrays(run.state.evaluated, batches, n, views)
        result |= {f"{name}_accuracy": ev["accuracy"], f"{name}_loss": ev["loss"]}
        run.writer.write(step, name, {"accuracy": ev["accuracy"], "loss": ev["loss"], "train_seconds": seconds})
        if name == "test":
            # Kept with the checkpoint, so a restored model can be checked label for label.
            result["test_predictions"] = evaluate.predictions_string(ev["logits_NxC"])
    run.state.model.train()
    val = f", validation {result['val_accuracy']:.4%}" if "val_accuracy" in result else ""
    run.say(f"{where}: test accuracy {result['test_accuracy']:.4%}{val}")
    return result


def _save(run: Training, extra: dict | None = None) -> None:
    """Checkpoints the current step (once), unless the parameters are no longer finite."""
    if run.ckpts.has(run.step):
        return
    if not bool(all_finite(nnx.state(run.state.model))):
        raise _diverged(f"The parameters became NaN or infinite before step {run.step}", run.workdir)
    meta = {**run.meta, "epoch": run.step / run.steps_per_epoch, "train_seconds": run.clock.seconds}
    run.ckpts.save(run.step, run.state, run.rng, meta | (extra or {}))


def _stop(run: Training, signum: int) -> dict:
    """Saves the current step for a signal and says how to resume."""
    run.clock.stop(run.state)
    _save(run)
    run.say(
        f"Stopped by signal {signum} at step {run.step}: checkpoint saved in {run.workdir}; "
        "run the same command to resume.",
        file=sys.stderr,
    )
    return {"stopped_by": signum}


def _close(run: Training) -> None:
    run.trace.stop()
    run.bar.close()
    try:
        run.writer.close()
    finally:
        run.ckpts.close()  # also when the writer fails: it waits for the last save and unlocks the workdir


def _diverged(what: str, workdir: epath.Path) -> UserError:
    return UserError(
        f"{what}. The run stopped; the last good checkpoint in {workdir} is kept and nothing newer was saved. "
        f"Lower the learning rate or change the recipe, then train into a new --workdir."
    )
