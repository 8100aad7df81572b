import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from digitjax import augment, evaluate
from digitjax import model as model_lib


@pytest.fixture(scope="module")
def digits_Bx28x28x1(digits):
    return model_lib.to_input(jnp.asarray(digits(16, seed=0)[0]))


def test_zero_ranges_are_the_identity(digits_Bx28x28x1):
    out = augment.random_maps(jax.random.key(0), augment.Augment(), digits_Bx28x28x1)
    np.testing.assert_array_equal(out, digits_Bx28x28x1)


def test_shifted_moves_ink_and_fills_zeros():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    down_left = augment.shifted(x, 1, -1)[0, ..., 0]
    np.testing.assert_array_equal(down_left[0], 0)  # the top row came from outside
    np.testing.assert_array_equal(down_left[:, -1], 0)
    np.testing.assert_array_equal(down_left[1:, :-1], x[0, :-1, 1:, 0])


def test_maps_are_small_per_image_and_keep_the_digit(digits_Bx28x28x1):
    aug = augment.Augment(rotate_deg=10, scale=0.1, shift_px=2, elastic_px=1)
    a = augment.random_maps(jax.random.key(1), aug, digits_Bx28x28x1)
    b = augment.random_maps(jax.random.key(1), aug, digits_Bx28x28x1)
    c = augment.random_maps(jax.random.key(2), aug, digits_Bx28x28x1)
    np.testing.assert_array_equal(a, b)  # a function of the key alone: resumed runs see the same images
    assert not np.allclose(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    ink_before, ink_after = digits_Bx28x28x1.sum((1, 2, 3)), a.sum((1, 2, 3))
    assert np.all(np.abs(ink_after / ink_before - 1) < 0.35), ink_after / ink_before  # scale^2 and edges
    # Every image moved differently: per-image differences to the original are not all the same.
    moved = np.abs(np.asarray(a - digits_Bx28x28x1)).sum((1, 2, 3))
    assert moved.min() > 0 and moved.std() > 0


def test_a_frame_is_left_black_and_the_rest_is_the_same_image(digits_Bx28x28x1):
    aug = augment.Augment(rotate_deg=10, scale=0.1, shift_px=2, elastic_px=1)
    whole = np.asarray(augment.random_maps(jax.random.key(3), aug, digits_Bx28x28x1))
    framed = np.asarray(augment.random_maps(jax.random.key(3), aug, digits_Bx28x28x1, frame=2))
    assert framed.shape == whole.shape
    np.testing.assert_array_equal(framed[:, 2:-2, 2:-2], whole[:, 2:-2, 2:-2])
    inside = np.zeros(whole.shape, bool)
    inside[:, 2:-2, 2:-2] = True
    assert whole[~inside].any() and not framed[~inside].any()  # the frame had ink; now black


def test_each_image_moves_by_its_own_affine_map():
    # A dot of ink at q lands where the inverse map sends back to q: p = R^-1 (q - offset).
    aug = augment.Augment(rotate_deg=20, scale=0.2, shift_px=3)
    affine_Bx2x3 = augment.random_affines(jax.random.key(3), aug, 8, 28, 28)
    rot_Bx2x2, offset_Bx2 = affine_Bx2x3[..., :2], affine_Bx2x3[..., 2]
    angle_B = np.degrees(np.arctan2(rot_Bx2x2[:, 0, 1], rot_Bx2x2[:, 0, 0]))
    scale_B = 1 / np.hypot(rot_Bx2x2[:, 0, 0], rot_Bx2x2[:, 0, 1])
    assert np.all(np.abs(angle_B) <= 20) and np.all(np.abs(scale_B - 1) <= 0.2) and angle_B.std() > 1
    x = jnp.zeros((8, 28, 28, 1)).at[:, 9, 17].set(1.0)
    out_Bx28x28 = augment.bilinear(x, augment.source_coordinates(affine_Bx2x3, 28, 28))[..., 0]
    yy, xx = np.mgrid[:28, :28]
    ink_B = out_Bx28x28.sum((1, 2))
    centroid_Bx2 = np.stack([(out_Bx28x28 * yy).sum((1, 2)), (out_Bx28x28 * xx).sum((1, 2))], -1) / ink_B[:, None]
    expected_Bx2 = np.linalg.solve(rot_Bx2x2, (np.array([9.0, 17.0]) - offset_Bx2)[..., None])[..., 0]
    np.testing.assert_allclose(centroid_Bx2, expected_Bx2, atol=0.3)


def test_from_config_is_none_without_augmentation():
    from experiments import best, default

    assert augment.Augment.from_config(default.get_config()) is None
    assert augment.Augment.from_config(best.get_config()) == augment.Augment(10.0, 0.1, 2.0, 1.0)


def test_test_time_shifts_average_the_five_views(digits):
    model = model_lib.create("fast", seed=0)
    model.eval()
    images, labels = jax.tree.map(jnp.asarray, digits(8, seed=0))
    mask = jnp.ones(8, bool)
    _, _, logits_BxC = evaluate.eval_step(model, images, labels, mask, augment.TestViews(shifts=True))
    x = model_lib.to_input(images)
    expected = jnp.mean(jnp.stack([nnx.softmax(model(augment.shifted(x, *s))) for s in augment.TEST_SHIFTS]), 0)
    np.testing.assert_allclose(jnp.exp(logits_BxC), expected, rtol=1e-5, atol=1e-6)
    _, _, plain_BxC = evaluate.eval_step(model, images, labels, mask)
    assert not np.allclose(nnx.softmax(plain_BxC), expected)


def test_test_time_warps_are_averaged_after_the_shifts(digits):
    model = model_lib.create("fast", seed=0)
    model.eval()
    images, labels = jax.tree.map(jnp.asarray, digits(8, seed=0))
    views = augment.TestViews(shifts=True, warps=((8.0, 1.0), (-8.0, 0.92)))
    _, _, logits_BxC = evaluate.eval_step(model, images, labels, jnp.ones(8, bool), views)
    x = model_lib.to_input(images)
    inputs = [augment.shifted(x, *s) for s in augment.TEST_SHIFTS]
    inputs += [augment.warped(x, 8.0, 1.0), augment.warped(x, -8.0, 0.92)]
    expected = jnp.mean(jnp.stack([nnx.softmax(model(v)) for v in inputs]), 0)
    np.testing.assert_allclose(jnp.exp(logits_BxC), expected, rtol=1e-5, atol=1e-6)


def test_warped_rotates_and_zooms_about_the_centre(digits_Bx28x28x1):
    x = digits_Bx28x28x1
    np.testing.assert_allclose(augment.warped(x, 0.0, 1.0), x, atol=1e-6)
    # A quarter turn maps pixel centres onto pixel centres: exactly numpy's rot90, counter-clockwise.
    np.testing.assert_allclose(augment.warped(x, 90.0, 1.0), jnp.rot90(x, 1, axes=(1, 2)), atol=1e-4)
    # A third of the size about the centre (13.5, 13.5): output pixel p samples source pixel 3p - 27.
    shrunk = augment.warped(x, 0.0, 1 / 3)
    np.testing.assert_allclose(shrunk[:, 9:19, 9:19], x[:, ::3, ::3], atol=1e-4)
    np.testing.assert_array_equal(shrunk.at[:, 9:19, 9:19].set(0), 0)


def test_test_views_from_a_restored_config_are_static():
    config = ml_collections.ConfigDict({"test_time_shifts": False, "test_time_warps": [[8, 1], [-8, 1]]})
    views = augment.TestViews.from_config(config)
    assert views == augment.TestViews(False, ((8.0, 1.0), (-8.0, 1.0)))
    hash(views)  # a static argument of the jitted eval_step
    assert augment.TestViews.from_config(ml_collections.ConfigDict({"test_time_shifts": False})) is None
