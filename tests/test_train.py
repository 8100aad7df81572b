import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from digitjax import data, train
from digitjax import model as model_lib
from digitjax.errors import UserError
from experiments import default, fast, seed, smoke


@pytest.mark.parametrize("module", [default, fast, seed, smoke])
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
        train.train_step(model, optimizer, metrics, images, labels, order, i % 2, jax.random.key(0))
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
