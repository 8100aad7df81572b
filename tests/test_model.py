import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from digitjax import model as model_lib
from digitjax.errors import UserError
from digitjax.ops import winograd


def n_params(m) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))


@pytest.mark.parametrize(
    "name, params",
    [("seed", 2_380_938), ("fast", None), ("small", None), ("deep", None), ("s2d", None), ("s2d24", None)],
)
def test_zoo_shapes_and_sizes(name, params):
    m = model_lib.create(name, seed=0)
    m.eval()
    logits_BxC = m(jnp.zeros((3, 28, 28, 1)))
    assert logits_BxC.shape == (3, model_lib.NUM_CLASSES)
    if params:  # the Keras model: 320 + 18,496 + 2,359,552 + 2,570
        assert n_params(m) == params


def test_the_zoo_orders_by_cost():
    def flops(name):
        m = model_lib.create(name, seed=0, conv="xla")  # XLA counts no FLOPs in oneDNN's custom calls
        m.eval()
        graphdef, state = nnx.split(m)
        fn = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
        return fn.lower(state, jnp.zeros((1, 28, 28, 1))).compile().cost_analysis()["flops"]

    assert flops("small") < flops("fast") / 4 < flops("seed") / 8 < flops("deep") / 8
    assert flops("s2d") < flops("fast") / 2
    assert flops("s2d24") < flops("s2d")  # 12x12 positions for 14x14, at 24 channels for 16


def test_s2d24_sees_only_the_central_24x24_pixels():
    """What lets augmentation leave its `ignored_border` unsampled."""
    m = model_lib.create("s2d24", seed=0, conv="xla")
    m.eval()
    assert model_lib.ignored_border(m) == 2 and model_lib.ignored_border(model_lib.create("small", seed=0)) == 0
    x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
    frame = jnp.ones((28, 28, 1), bool).at[2:26, 2:26].set(False)
    np.testing.assert_array_equal(m(x), m(jnp.where(frame, 1.0 - x, x)))
    assert not np.allclose(m(x), m(x.at[:, 2, 2].add(1.0)))


def test_space_to_depth_keeps_every_pixel_once():
    x = jnp.arange(2 * 4 * 6 * 3).reshape(2, 4, 6, 3)
    y = model_lib.space_to_depth(x)
    assert y.shape == (2, 2, 3, 12)
    # Position (i, j) holds the 2x2 block at (2i, 2j), row by row, each pixel's channels together.
    np.testing.assert_array_equal(y[1, 1, 2].reshape(2, 2, 3), x[1, 2:4, 4:6])
    assert sorted(np.asarray(y).ravel()) == sorted(np.asarray(x).ravel())


def test_init_is_seeded():
    a, b, c = (nnx.state(model_lib.create("seed", seed=s), nnx.Param) for s in (0, 0, 1))
    leaves = lambda s: jax.tree.leaves(s)  # noqa: E731
    assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
    assert not all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(c)))


def test_dropout_only_in_training():
    m = model_lib.create("seed", seed=0)
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    m.train()
    y1 = m(x, rngs=nnx.Rngs(dropout=1))
    y2 = m(x, rngs=nnx.Rngs(dropout=2))
    assert not np.allclose(y1, y2)
    m.eval()
    np.testing.assert_array_equal(m(x), m(x))


def test_to_input_scales_pixels():
    x = model_lib.to_input(jnp.array([[[0, 255]]], jnp.uint8))
    assert x.shape == (1, 1, 2, 1) and x.dtype == jnp.float32
    np.testing.assert_array_equal(x[..., 0], [[[0.0, 1.0]]])


def test_unknown_model_is_a_user_error():
    families, aliases = ["deep", "fast", "s2d", "seed"], ["s2d24", "s2d24_wide", "s2d24_wider", "s2d24_wider256"]
    with pytest.raises(UserError, match=re.escape(f"one of {families} (older runs' {aliases + ['s2d_wide', 'small']}")):
        model_lib.create("resnet", seed=0)


def test_max_pool_2x2_matches_flax():
    x = jax.random.normal(jax.random.key(0), (3, 24, 24, 5))
    np.testing.assert_array_equal(model_lib.max_pool_2x2(x), nnx.max_pool(x, (2, 2), (2, 2)))
    odd = jax.random.normal(jax.random.key(1), (2, 7, 7, 3))
    np.testing.assert_array_equal(model_lib.max_pool_2x2(odd), nnx.max_pool(odd, (2, 2), (2, 2)))


def test_winograd_conv3x3_and_its_gradients_match_xla_conv():
    x = jax.random.normal(jax.random.key(0), (3, 14, 12, 5))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 5, 7))
    dy = jax.random.normal(jax.random.key(2), (3, 12, 10, 7))

    def xla(x, kernel):
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=dims, precision="highest")

    def rel_err(a, b):
        return float(jnp.abs(a - b).max() / jnp.abs(b).max())

    assert rel_err(winograd.conv3x3(x, kernel), xla(x, kernel)) < 1e-5

    def grads(conv):
        return jax.grad(lambda x, k: jnp.vdot(conv(x, k), dy), (0, 1))(x, kernel)

    for ours, reference in zip(grads(winograd.conv3x3), grads(xla)):
        assert rel_err(ours, reference) < 1e-5
    with pytest.raises(ValueError, match="even output"):
        winograd.conv3x3(x[:, :13], kernel)
