import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from digitjax import augment, data, train
from digitjax import model as model_lib
from digitjax.errors import UserError
from experiments import best, default, fast, seed, smoke


@pytest.mark.parametrize("module", [default, fast, seed, smoke, best])
def test_configs_build_an_optimizer(module):
    config = module.get_config()
    tx, schedule = train.make_optimizer(config, total_steps=100)
    assert float(schedule(50)) > 0
    assert config.model in model_lib.MODELS


def test_seed_recipe_is_the_keras_one():
    config = seed.get_config()
    assert (config.model, config.optimizer, config.learning_rate, config.batch_size, config.num_epochs) == (
        "seed",
        "adadelta",
        1.0,
        128,
        10,
    )


def test_unknown_optimizer_is_a_user_error():
    config = default.get_config()
    config.optimizer = "adamax"
    with pytest.raises(UserError, match="Unknown optimizer 'adamax'"):
        train.make_optimizer(config, 10)


def test_train_step_learns_a_fixed_batch(test_split):
    config = smoke.get_config()
    model = model_lib.create("fast", seed=0)
    tx, _ = train.make_optimizer(config, total_steps=40)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())
    images, labels = jax.device_put((test_split.images_NxHxW[:64], test_split.labels_N[:64]))
    order = jnp.arange(64).reshape(2, 32)
    model.train()
    losses = []
    for i in range(40):
        train.train_step(model, optimizer, metrics, None, images, labels, order, i % 2, jax.random.key(0))
        if i % 10 == 9:
            losses.append(float(metrics.compute()["loss"]))
            metrics.reset()
    assert int(optimizer.step[...]) == 40
    assert losses[-1] < 0.3 * losses[0], losses


def test_all_finite():
    assert bool(train.all_finite({"a": jnp.ones(3), "b": jnp.zeros(2)}))
    assert not bool(train.all_finite({"a": jnp.ones(3), "b": jnp.array([0.0, jnp.nan])}))


def test_epoch_order_covers_the_split_once():
    order = np.asarray(data.epoch_order(jax.random.key(3), 2, 1024, 32))
    assert sorted(order.ravel().tolist()) == list(range(1024))


@pytest.mark.parametrize("recipe", ["plain", "augmented with an average"])
def test_many_steps_per_dispatch_equal_single_steps(test_split, recipe):
    """The trainer's chunked loop is the same algorithm as stepping one batch at a time."""
    config = smoke.get_config()
    aug, ema_decay = (augment.Augment(10, 0.1, 2, 1), 0.9) if recipe != "plain" else (None, 0.0)
    images, labels = jax.device_put((test_split.images_NxHxW[:256], test_split.labels_N[:256]))
    order = data.epoch_order(jax.random.key(0), 0, 256, 32)
    runs = []
    for chunked in (False, True):
        model = model_lib.create("seed", seed=0)
        ema = train.weight_average(model) if ema_decay else None
        optimizer = nnx.Optimizer(model, train.make_optimizer(config, 8)[0], wrt=nnx.Param)
        metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())
        model.train()
        key = jax.random.key(1)
        if chunked:
            train.train_steps(model, optimizer, metrics, images, labels, order, 0, 3, key, ema, aug, ema_decay)
            train.train_steps(model, optimizer, metrics, images, labels, order, 3, 5, key, ema, aug, ema_decay)
        else:
            for i in range(8):
                train.train_step(model, optimizer, metrics, ema, images, labels, order, i, key, aug, ema_decay)
        averaged = jax.tree.leaves(nnx.state(ema, nnx.Param)) if ema is not None else []
        runs.append((jax.tree.leaves(nnx.state(model, nnx.Param)), averaged, float(metrics.compute()["loss"])))
    assert int(optimizer.step[...]) == 8
    for a, b in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert runs[0][2] == pytest.approx(runs[1][2], rel=1e-5)
    if ema_decay:  # the average trails the weights: after 8 steps it differs from them
        assert not np.allclose(runs[1][0][0], runs[1][1][0])


def test_bench_smoke_prints_its_figures():
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "digitjax.bench", "--config", "experiments/smoke.py", "--smoke", "--baseline"],
        cwd=train.EXPERIMENTS.parent,
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
