"""What the canvas shows of a model: the layers each zoo model marks, and the nearest training
digits found in the last of them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from digitjax import layers
from digitjax import model as model_lib
from webui import neighbours

# name -> [(layer, kind, shape of one example, made by a kernel)], in call order.
ZOO_LAYERS = {
    "seed": [
        ("conv1", "maps", (26, 26, 32), True),
        ("conv2", "maps", (24, 24, 64), True),
        ("pool", "maps", (12, 12, 64), False),
        ("dense1", "units", (256,), False),
    ],
    "fast": [
        ("conv1", "maps", (28, 28, 32), True),
        ("pool1", "maps", (14, 14, 32), False),
        ("conv2", "maps", (14, 14, 64), True),
        ("pool2", "maps", (7, 7, 64), False),
        ("dense1", "units", (128,), False),
    ],
    "small": [
        ("conv1", "maps", (28, 28, 8), True),
        ("pool1", "maps", (14, 14, 8), False),
        ("conv2", "maps", (14, 14, 24), True),
        ("pool2", "maps", (7, 7, 24), False),
        ("dense1", "units", (128,), False),
    ],
    "s2d": [
        ("conv1", "maps", (14, 14, 16), True),
        ("pool1", "maps", (7, 7, 16), False),
        ("conv2", "maps", (7, 7, 32), True),
        ("dense1", "units", (128,), False),
    ],
    "s2d24": [
        ("conv1", "maps", (12, 12, 24), True),
        ("pool1", "maps", (6, 6, 24), False),
        ("conv2", "maps", (6, 6, 32), True),
        ("dense1", "units", (128,), False),
    ],
    "s2d24_wide": [
        ("conv1", "maps", (12, 12, 32), True),
        ("pool1", "maps", (6, 6, 32), False),
        ("conv2", "maps", (6, 6, 64), True),
        ("dense1", "units", (128,), False),
    ],
    "s2d24_wider": [
        ("conv1", "maps", (12, 12, 32), True),
        ("pool1", "maps", (6, 6, 32), False),
        ("conv2", "maps", (6, 6, 96), True),
        ("dense1", "units", (128,), False),
    ],
    "s2d24_wider256": [
        ("conv1", "maps", (12, 12, 32), True),
        ("pool1", "maps", (6, 6, 32), False),
        ("conv2", "maps", (6, 6, 96), True),
        ("dense1", "units", (256,), False),
    ],
    "s2d_wide": [
        ("conv1", "maps", (14, 14, 32), True),
        ("pool1", "maps", (7, 7, 32), False),
        ("conv2", "maps", (7, 7, 64), True),
        ("dense1", "units", (128,), False),
    ],
    "deep": [
        ("conv1", "maps", (28, 28, 32), True),
        ("conv2", "maps", (28, 28, 32), True),
        ("pool1", "maps", (14, 14, 32), False),
        ("conv3", "maps", (14, 14, 64), True),
        ("conv4", "maps", (14, 14, 64), True),
        ("pool2", "maps", (7, 7, 64), False),
        ("dense1", "units", (256,), False),
    ],
}


@pytest.mark.parametrize("name", sorted(model_lib.FAMILIES))
def test_every_zoo_model_shows_its_layers(name):
    model = model_lib.create(name, seed=0)
    model.eval()
    shown = layers.describe(model, model_lib.INPUT_SHAPE)
    assert [(s.name, s.kind, s.shape, s.kernel_HWIO is not None) for s in shown] == ZOO_LAYERS[name]
    conv = {s.name: s for s in shown}["conv1"]
    np.testing.assert_array_equal(
        conv.kernel_HWIO, model.conv1.kernel[...] if name != "deep" else model.convs[0].kernel[...]
    )


def test_shown_values_are_the_forward_pass_and_training_pays_nothing(digits):
    """`record` returns the very values the forward pass computed (the logits follow from the last
    one), and outside it `show` stores nothing in the model: its state is unchanged by a call."""
    model = model_lib.create("fast", seed=0)
    model.eval()
    x = model_lib.to_input(jnp.asarray(digits(4, seed=3)[0]))
    before = jax.tree.map(np.asarray, nnx.state(model))
    logits = model(x)
    assert jax.tree.all(jax.tree.map(np.array_equal, before, jax.tree.map(np.asarray, nnx.state(model))))
    recorded_logits, recorded = layers.record(model, x)
    np.testing.assert_array_equal(recorded_logits, logits)
    dense1 = dict((n, v) for n, v, _ in recorded)["dense1"]
    np.testing.assert_allclose(model.dense2(dense1), logits, rtol=1e-5, atol=1e-5)
    pool2 = dict((n, v) for n, v, _ in recorded)["pool2"]
    np.testing.assert_array_equal(pool2, model_lib.max_pool_2x2(dict((n, v) for n, v, _ in recorded)["conv2"]))
    np.testing.assert_array_equal(layers.embedding(recorded), dense1)


def test_a_model_that_shows_no_layers_has_none():
    class Plain(nnx.Module):
        def __init__(self):
            self.dense = nnx.Linear(784, 10, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.dense(x.reshape(x.shape[0], -1))

    assert layers.describe(Plain(), model_lib.INPUT_SHAPE) == []


def test_nearest_is_the_brute_force_search(digits):
    images, labels = digits(300, seed=2)
    model = model_lib.create("small", seed=0)
    model.eval()
    index = neighbours.build(model, images, labels)
    queries = np.asarray(neighbours.embed(model, digits(5, seed=9)[0]))
    indices, distances = jax.jit(neighbours.nearest, static_argnums=3)(
        jnp.asarray(queries), index.embeddings_NxD, index.sq_norms_N, 8
    )
    all_NxD = np.asarray(index.embeddings_NxD, np.float64)
    for q, got, got_d in zip(queries, np.asarray(indices), np.asarray(distances)):
        d = np.sqrt(((all_NxD - q) ** 2).sum(-1))
        np.testing.assert_array_equal(got, np.argsort(d, kind="stable")[:8])
        np.testing.assert_allclose(got_d, np.sort(d)[:8], rtol=1e-3, atol=1e-3)


def test_embeddings_are_cached_beside_the_checkpoint(digits, tmp_path):
    images, labels = digits(100, seed=4)
    model = model_lib.create("small", seed=0)
    model.eval()
    first = neighbours.build(model, images, labels, tmp_path / "embeddings")
    (cached,) = (tmp_path / "embeddings").iterdir()
    assert cached.name.startswith("train-100-") and cached.suffix == ".npy"
    other = model_lib.create("small", seed=1)  # were the cache ignored, these would differ
    other.eval()
    again = neighbours.build(other, images, labels, tmp_path / "embeddings")
    np.testing.assert_array_equal(first.embeddings_NxD, again.embeddings_NxD)
    changed = neighbours.build(other, images[:50], labels[:50], tmp_path / "embeddings")  # another training set
    assert changed.embeddings_NxD.shape[0] == 50 and len(list((tmp_path / "embeddings").iterdir())) == 2
