import numpy as np
import pytest
from PIL import Image

from digitjax.canvas import preprocess


def ink_box(image_28x28, threshold=0.3 * 255):
    rows, cols = np.flatnonzero((image_28x28 >= threshold).any(1)), np.flatnonzero((image_28x28 >= threshold).any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def centre_of_mass(image):
    w = image.astype(np.float64)
    return (w.sum(1) * np.arange(28)).sum() / w.sum(), (w.sum(0) * np.arange(28)).sum() / w.sum()


@pytest.mark.slow
def test_mnist_digits_come_out_almost_unchanged(test_split):
    """MNIST's own digits are already normalised: the function must (nearly) leave them be."""
    images = test_split.images_NxHxW[:200]
    out = np.stack([preprocess.to_mnist(image).image_28x28 for image in images])
    assert np.mean(np.abs(out.astype(int) - images.astype(int))) < 3.0  # grey levels, of 255
    assert np.mean([np.array_equal(ink_box(a), ink_box(b)) for a, b in zip(out, images)]) > 0.9


def test_big_drawing_is_scaled_into_20x20_and_centred():
    canvas = np.full((280, 280), 255, np.uint8)
    canvas[40:240, 100:130] = 0  # a tall bar, dark on light: a "1"
    canvas[40:70, 100:200] = 0
    prepared = preprocess.to_mnist(canvas)
    assert prepared.inverted and not prepared.empty and prepared.digit_like
    height, width = ink_box(prepared.image_28x28)
    assert height == 20 and width == 10  # aspect ratio 200:100 kept
    com_y, com_x = centre_of_mass(prepared.image_28x28)
    assert abs(com_y - 14) <= 0.5 and abs(com_x - 14) <= 0.5


def test_polarity_and_transparency_do_not_matter():
    ink = np.zeros((200, 150), np.uint8)
    ink[20:180, 60:80] = 255
    ink[20:40, 30:120] = 255
    light_on_dark = preprocess.to_mnist(ink).image_28x28
    dark_on_light = preprocess.to_mnist(255 - ink).image_28x28
    rgba = np.zeros((200, 150, 4), np.uint8)
    rgba[..., 3] = ink  # black strokes on a transparent canvas
    transparent = preprocess.to_mnist(Image.fromarray(rgba, "RGBA")).image_28x28
    np.testing.assert_array_equal(light_on_dark, dark_on_light)
    np.testing.assert_array_equal(light_on_dark, transparent)


@pytest.mark.parametrize("fill", [0, 128, 255])
def test_uniform_images_are_empty(fill):
    prepared = preprocess.to_mnist(np.full((100, 80), fill, np.uint8))
    assert prepared.empty and not prepared.image_28x28.any()


def test_a_dot_or_a_blob_is_not_digit_like():
    dot = np.zeros((280, 280), np.uint8)
    dot[100:104, 100:104] = 255
    assert not preprocess.to_mnist(dot).digit_like
    blob = np.zeros((280, 280), np.uint8)
    blob[40:240, 40:240] = 255
    assert not preprocess.to_mnist(blob).digit_like


def test_bad_arrays_are_value_errors():
    with pytest.raises(ValueError, match="NaN"):
        preprocess.to_mnist(np.full((28, 28), np.nan))
    with pytest.raises(ValueError, match="2-D"):
        preprocess.to_mnist(np.zeros(784))
