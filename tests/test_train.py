import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from digitjax import augment, data, optim, trainer
from digitjax import model as model_lib
from digitjax.errors import UserError
from digitjax.runs import checkpoint, metrics
from digitjax.state import TrainState
from digitjax.tools import bench
from digitjax.train import EXPERIMENTS
from experiments import best, custom_model, default, fast, fast995, seed, smoke


@pytest.mark.parametrize("module", [default, fast, fast995, seed, smoke, best, custom_model])
def test_configs_build_an_optimizer_and_their_model(module):
    config = module.get_config()
    tx, schedule = optim.make_optimizer(config, total_steps=100)
    assert float(schedule(50)) > 0
    model = model_lib.create(config.model, 0, conv="xla")
    model.eval()
    logits = model(jnp.zeros((2, *model_lib.INPUT_SHAPE)))
    assert logits.shape == (2, model_lib.NUM_CLASSES)


def test_seed_recipe_is_the_keras_one():
    config = seed.get_config()
    recipe = (config.model, config.optimizer, config.learning_rate, config.batch_size, config.num_epochs)
    assert recipe == ("seed", "adadelta", 1.0, 128, 10)


def _last_update(tx: optax.GradientTransformation) -> jax.Array:
    params, state = {"w": jnp.ones(3)}, None
    state = tx.init(params)
    for g in [10.0] + [0.1] * 100:  # b2 sets how soon the first, large gradient is forgotten
        update, state = tx.update({"w": jnp.array([g, 2 * g, 0.0])}, state, params)
    return update["w"]


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_b2_is_the_configs(name):
    config = fast.get_config()
    config.optimizer, config.lr_schedule = name, "constant"
    update = _last_update(optim.make_optimizer(config, 10)[0])
    if name == "adam":
        reference = optax.adam(config.learning_rate, b2=config.adam_b2)
    else:
        reference = optax.adamw(config.learning_rate, b2=config.adam_b2, weight_decay=config.weight_decay)
    np.testing.assert_allclose(update, _last_update(reference), rtol=1e-6)
    config.adam_b2 = 0.999
    assert not np.allclose(update, _last_update(optim.make_optimizer(config, 10)[0]), rtol=0.05)


def test_unknown_optimizer_is_a_user_error():
    config = default.get_config()
    config.optimizer = "adamax"
    with pytest.raises(UserError, match="Unknown optimizer 'adamax'"):
        optim.make_optimizer(config, 10)


def _state(config, model_name: str = "fast", ema: bool = False) -> TrainState:
    model = model_lib.create(model_name, seed=0)
    optimizer = nnx.Optimizer(model, optim.make_optimizer(config, 40)[0], wrt=nnx.Param)
    metrics_ = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())
    model.train()
    return TrainState(model, optimizer, metrics_, trainer.weight_average(model) if ema else None)


def test_train_step_learns_a_fixed_batch(digits):
    config = smoke.get_config()
    state = _state(config)
    images, labels = jax.device_put(digits(64, seed=0))
    batches = trainer.TrainingSet(images, labels, jnp.arange(64).reshape(2, 32))
    losses = []
    for i in range(40):
        trainer.train_step(state, batches, i % 2, jax.random.key(0), trainer.Options())
        if i % 10 == 9:
            losses.append(float(state.metrics.compute()["loss"]))
            state.metrics.reset()
    assert int(state.optimizer.step[...]) == 40
    assert losses[-1] < 0.3 * losses[0], losses


def test_all_finite():
    assert bool(trainer.all_finite({"a": jnp.ones(3), "b": jnp.zeros(2)}))
    assert not bool(trainer.all_finite({"a": jnp.ones(3), "b": jnp.array([0.0, jnp.nan])}))


def test_epoch_order_covers_the_split_once():
    order = np.asarray(data.epoch_order(jax.random.key(3), 2, 1024, 32))
    assert sorted(order.ravel().tolist()) == list(range(1024))


@pytest.mark.parametrize("recipe", ["plain", "augmented with an average"])
def test_many_steps_per_dispatch_equal_single_steps(digits, recipe):
    """The trainer's chunked loop is the same algorithm as stepping one batch at a time."""
    config = smoke.get_config()
    averaged = recipe != "plain"
    options = trainer.Options(augment.Augment(10, 0.1, 2, 1), 0.9) if averaged else trainer.Options()
    images, labels = jax.device_put(digits(256, seed=0))
    batches = trainer.TrainingSet(images, labels, data.epoch_order(jax.random.key(0), 0, 256, 32))
    runs = []
    for chunked in (False, True):
        state = _state(config, "seed", ema=averaged)
        key = jax.random.key(1)
        if chunked:
            trainer.train_steps(state, batches, 0, 3, key, options)
            trainer.train_steps(state, batches, 3, 5, key, options)
        else:
            for i in range(8):
                trainer.train_step(state, batches, i, key, options)
        average = jax.tree.leaves(nnx.state(state.ema, nnx.Param)) if averaged else []
        runs.append((jax.tree.leaves(nnx.state(state.model, nnx.Param)), average, state))
    assert int(runs[1][2].optimizer.step[...]) == 8
    for a, b in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    losses = [float(r[2].metrics.compute()["loss"]) for r in runs]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    if averaged:  # the average trails the weights: after 8 steps it differs from them
        assert not np.allclose(runs[1][0][0], runs[1][1][0])


def test_run_on_synthetic_digits_learns_logs_and_checkpoints(synthetic_checkpoints):
    workdir = synthetic_checkpoints / "synthetic"
    records = metrics.read(workdir)
    assert {r["split"] for r in records} == {"train", "test", "val"}
    tests = [r for r in records if r["split"] == "test"]
    assert len(tests) == 1 and tests[0]["accuracy"] > 0.9, tests  # chance is 0.1
    steps, best_step = checkpoint.steps(workdir)
    assert best_step == 78 and 78 in steps  # 2,500 images / batch 32: the epoch's end
    restored = checkpoint.load_for_inference(workdir)
    assert restored.meta["test_accuracy"] == tests[0]["accuracy"]
    assert restored.meta["conv_routes"]["train"].keys() == {"conv1", "conv2"}


def test_a_run_tests_between_epoch_ends_when_its_config_asks(synthetic_tfds, tmp_path):
    """eval_every_steps: test records mid-epoch (where a short run crosses 99%), on the training
    clock, which stops while testing; checkpoints and the returned result stay at epoch ends."""
    config = fast.get_config()
    config.train_size, config.batch_size, config.num_epochs, config.eval_every_steps = 512, 64, 2, 3
    config.test_time_shifts = False
    result = trainer.train_and_evaluate(config, tmp_path / "run", data.Paths(str(synthetic_tfds), "/nonexistent"))
    tests = [r for r in metrics.read(tmp_path / "run") if r["split"] == "test"]
    assert [r["step"] for r in tests] == [3, 6, 8, 9, 12, 15, 16]  # 8 steps an epoch
    seconds = [r["train_seconds"] for r in tests]
    assert 0 < seconds[0] and seconds == sorted(seconds) and len(set(seconds)) == len(seconds)
    assert result["step"] == 16 and result["test_accuracy"] == tests[-1]["accuracy"]
    assert set(checkpoint.steps(tmp_path / "run")[0]) == {8, 16}
    first_crossing = next(r for r in tests if r["accuracy"] >= 0.5)
    assert metrics.time_to(metrics.read(tmp_path / "run"), 0.5) == first_crossing["train_seconds"]


def test_frequent_evals_are_a_tenth_of_an_epoch_unless_the_config_says():
    config = fast.get_config()  # 60,000 images, batch 128: 468 steps an epoch
    assert bench.with_frequent_evals(config).eval_every_steps == 46
    assert config.eval_every_steps == 0  # the caller's config is left as it was
    assert bench.with_frequent_evals(fast995.get_config()).eval_every_steps == fast995.get_config().eval_every_steps
    config.train_size, config.batch_size = 640, 64
    assert bench.with_frequent_evals(config).eval_every_steps == 1


def test_a_model_defined_outside_digitjax_trains_from_its_config(synthetic_tfds, digits, tmp_path):
    """experiments/custom_model.py: a model that is not in the zoo, named `module:Name` by its config."""
    config = custom_model.get_config()
    config.num_epochs, config.validation_size, config.batch_size = 2, 0, 64
    result = trainer.train_and_evaluate(config, tmp_path / "custom", data.Paths(str(synthetic_tfds), "/nonexistent"))
    assert result["step"] == 2 * (3000 // 64) and result["test_accuracy"] > 0.9, result
    restored = checkpoint.load_for_inference(tmp_path / "custom")
    assert type(restored.model) is custom_model.TinyCNN and restored.config.model == config.model
    images, labels = digits(200, seed=7)
    predicted = restored.model(model_lib.to_input(jnp.asarray(images))).argmax(-1)
    assert (np.asarray(predicted) == labels).mean() > 0.9


def test_a_model_that_does_not_import_is_a_user_error():
    with pytest.raises(UserError, match="Could not load model 'experiments.nowhere:Net'"):
        model_lib.create("experiments.nowhere:Net", 0)
    with pytest.raises(UserError, match="Unknown model 'resnet'.*package.module:Name"):
        model_lib.create("resnet", 0)


@pytest.mark.slow
def test_bench_accuracy_prints_the_time_to_each_target_of_a_recipe():
    """`bench --accuracy` on real MNIST, cut short: the 99.5% recipe's step (augmentation, weight
    average) trains, is tested a tenth of an epoch apart, and the crossings are printed."""
    overrides = [
        "--config.train_size=2560",
        "--config.batch_size=128",
        "--config.num_epochs=1",
        "--config.eval_every_steps=0",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "digitjax.tools.bench", "--config", "experiments/fast995.py", "--smoke", "--accuracy"]
        + overrides
        + ["--config.test_time_shifts=False", "--config.test_time_warps=()"],
        cwd=EXPERIMENTS.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert row["eval_every_steps"] == 2 and row["evaluations"] == 10  # 20 steps
    assert 0.5 < row["final_test_accuracy"] < 0.99 and row["seconds_to_99.0%"] is None
    assert 0 < row["train_seconds"] and 0 < row["train_compile_s"]
    assert "tested every 2 steps, 10 times: 99.0% after (not reached)" in proc.stdout
    assert row["machine"] in proc.stdout and "cores" in row["machine"]


@pytest.mark.slow
def test_bench_smoke_prints_its_figures():
    proc = subprocess.run(
        [sys.executable, "-m", "digitjax.tools.bench", "--config", "experiments/smoke.py", "--smoke", "--baseline"],
        cwd=EXPERIMENTS.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["variant"] for r in rows] == ["baseline", "digitjax"]
    for r in rows:
        assert r["train_images_per_s"] > 0 and 0 < r["share_of_matmul_peak"] < 1.5
        assert {"jax", "device_kind", "cpu_cores", "compile_s", "seconds_per_epoch"} <= set(r)
    baseline, ours = rows
    # The smoke model's second conv goes through Winograd: fewer FLOPs executed than the direct
    # convolutions it stands for, which the baseline executes as they are.
    assert baseline["step_gflop"] == pytest.approx(baseline["direct_conv_step_gflop"])
    assert ours["step_gflop"] < ours["direct_conv_step_gflop"] == pytest.approx(baseline["step_gflop"])
