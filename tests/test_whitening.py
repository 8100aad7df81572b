import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from digitjax import data, trainer, whitening
from digitjax import model as model_lib
from digitjax.errors import UserError
from digitjax.runs import checkpoint
from experiments import fast


def test_patches_times_a_kernel_is_the_same_padded_convolution():
    x_BxHxWxC = jax.random.normal(jax.random.key(0), (2, 6, 5, 3))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    expected = jax.lax.conv_general_dilated(
        x_BxHxWxC, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    got = (whitening.patches(x_BxHxWxC, 3) @ kernel.reshape(27, 4)).reshape(2, 6, 5, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_filters_decorrelate_the_patches_and_come_in_pairs(digits):
    images, _ = digits(300, seed=0)
    x = model_lib.space_to_depth(model_lib.to_input(jnp.asarray(images)))
    kernel = whitening.filters(x, (3, 3, 4, 16))
    p_PxD = whitening.patches(x, 3)
    features_PxK = (p_PxD - p_PxD.mean(axis=0)) @ kernel.reshape(36, 16)[:, :8]
    cov_KxK = np.asarray(features_PxK.T @ features_PxK / len(features_PxK))
    np.testing.assert_allclose(cov_KxK - np.diag(np.diag(cov_KxK)), 0, atol=1e-3)
    # Unit variance, less the share EPS takes from directions of little variance.
    assert np.all(np.diag(cov_KxK) <= 1 + 1e-3) and np.diag(cov_KxK)[0] > 0.99, np.diag(cov_KxK)
    np.testing.assert_array_equal(kernel[..., 8:], -kernel[..., :8])


def test_frozen_conv1_leaves_its_kernel_and_trains_the_rest():
    model = model_lib.create("s2d", seed=0, conv="xla")
    optimizer = nnx.Optimizer(model, whitening.frozen_conv1(optax.adam(1e-2)), wrt=nnx.Param)
    before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    optimizer.update(model, grads)
    np.testing.assert_array_equal(model.conv1.kernel[...], before["conv1"]["kernel"][...])
    assert not np.allclose(model.conv2.kernel[...], before["conv2"]["kernel"][...])


def test_a_frozen_stem_without_bn1_affine_skips_conv2s_input_gradient():
    """s2d24 (bn1 only normalizes): with conv1 frozen nothing below conv2 is trained, so XLA drops
    the backward pass through conv2's input, bn1 and conv1."""
    b, x = 8, jax.random.uniform(jax.random.key(0), (8, *model_lib.INPUT_SHAPE))
    labels = jnp.arange(b) % 10

    def step_flops(bn1_affine: bool) -> float:
        model = model_lib.SpaceToDepth(rngs=nnx.Rngs(0), conv="xla", widths=(24, 32), crop=2, bn1_affine=bn1_affine)
        optimizer = nnx.Optimizer(model, whitening.frozen_conv1(optax.adam(1e-3)), wrt=nnx.Param)
        graphdef, state = nnx.split((model, optimizer))

        def step(state):
            model, optimizer = nnx.merge(graphdef, state)
            loss = lambda m: trainer.loss_fn(m, x, labels, jax.random.key(1))[0]  # noqa: E731
            optimizer.update(model, nnx.grad(loss)(model))
            return nnx.state((model, optimizer))

        return jax.jit(step).lower(state).compile().cost_analysis()["flops"]

    conv2_input_gradient = 2 * b * 6 * 6 * 24 * 32 * 9
    assert step_flops(False) < step_flops(True) - 0.9 * conv2_input_gradient


def test_a_model_without_conv1_cannot_be_whitened(digits):
    model = model_lib.create("deep", seed=0, conv="xla")
    with pytest.raises(UserError, match="whiten_conv1 needs a model with a conv1"):
        whitening.whiten_conv1(model, jnp.asarray(digits(8, seed=0)[0]))


def test_label_smoothing_is_cross_entropy_against_mixed_targets():
    model = model_lib.create("s2d", seed=0, conv="xla")
    model.eval()
    x = jax.random.uniform(jax.random.key(0), (4, *model_lib.INPUT_SHAPE))
    labels = jnp.array([0, 3, 7, 9])
    plain, logits = trainer.loss_fn(model, x, labels, jax.random.key(1))
    smoothed, _ = trainer.loss_fn(model, x, labels, jax.random.key(1), 0.2)
    log_p = jax.nn.log_softmax(logits)
    np.testing.assert_allclose(plain, optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), rtol=1e-6)
    np.testing.assert_allclose(smoothed, 0.8 * plain - 0.2 * log_p.mean(), rtol=1e-5)


def test_a_whitened_run_keeps_its_first_layer_and_resumes(synthetic_tfds, tmp_path):
    config = fast.get_config()
    config.train_size, config.batch_size, config.num_epochs = 512, 64, 1
    config.whiten_conv1, config.label_smoothing, config.test_time_shifts = True, 0.1, False
    config.conv = "xla"
    tfds_dir = str(synthetic_tfds)
    trainer.train_and_evaluate(config, tmp_path / "run", data.Paths(tfds_dir, "/nonexistent"))
    config.num_epochs = 2
    result = trainer.train_and_evaluate(config, tmp_path / "run", data.Paths(tfds_dir, "/nonexistent"))
    assert result["step"] == 16 and result["test_accuracy"] > 0.3  # chance is 0.1
    train, _ = data.splits(config, data.Paths(tfds_dir, "/nonexistent"))
    model = checkpoint.load_for_inference(tmp_path / "run").model
    x = model.conv1_input(model_lib.to_input(jnp.asarray(train.images_NxHxW[: whitening.NUM_IMAGES])))
    # 1e-3: the least of the 12 directions moves by ~2e-4 between the trainer's jitted run and this one.
    np.testing.assert_allclose(model.conv1.kernel[...], whitening.filters(x, model.conv1.kernel.shape), atol=1e-3)
