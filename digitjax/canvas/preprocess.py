"""Any image of one digit -> the model's 28x28 input, normalised the way MNIST's digits were.

MNIST's digits were scaled, keeping their aspect ratio, to fit a 20x20 box (anti-aliased) and
placed in a 28x28 field so that their centre of mass is at its centre. A canvas drawing or a
photo is nothing like that until it gets the same treatment; `to_mnist` is the one place that
does it, for the web UI, the API and the evaluation alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

SIZE = 28  # the field
BOX = 20  # the longer side of the ink's bounding box after scaling
INK_THRESHOLD = 0.3  # of the normalised contrast: the clear ink, whose bounding box is scaled to BOX
NOISE_FLOOR = 0.05  # fainter than this is paper or sensor noise, not the ink's soft edge
MIN_CONTRAST = 0.15  # less than this between ink and background: nothing drawn
MIN_INK_EXTENT = 0.04  # ink spanning less of the image than this is a dot, not a digit


@dataclasses.dataclass(frozen=True)
class Prepared:
    image_28x28: np.ndarray  # uint8, 255 = ink; all zero when empty
    empty: bool  # no ink found: nothing to predict
    digit_like: bool  # False for a dot or a filled blob: any prediction is a guess
    inverted: bool  # the source was dark ink on a light background


def _gray(image: np.ndarray | Image.Image) -> np.ndarray:
    """Float [0, 1] grayscale; transparent pixels count as white paper."""
    if isinstance(image, Image.Image):
        if image.mode in ("RGBA", "LA", "P", "PA"):
            image = image.convert("RGBA")
            paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(paper, image)
        image = np.asarray(image.convert("L"), np.float32) / 255.0
    array = np.asarray(image, np.float32)
    if array.ndim == 3:
        array = array[..., :3].mean(-1)
    if array.ndim != 2 or min(array.shape) < 1:
        raise ValueError(f"expected a 2-D image, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("the image holds NaN or infinite values")
    return array / 255.0 if array.max() > 1.0 else array


def as_is(pixels_28x28: np.ndarray) -> Prepared:
    """28x28 grey levels already normalised as MNIST's are (255 = ink), e.g. an MNIST digit: used
    unchanged, so the model answers exactly what evaluation answered for it."""
    image = np.clip(np.round(pixels_28x28), 0, 255).astype(np.uint8)
    empty = not image.any()
    return Prepared(image, empty=empty, digit_like=not empty, inverted=False)


def to_mnist(image: np.ndarray | Image.Image) -> Prepared:
    """A drawing, scan or photo of one digit (either polarity, any size) -> MNIST-style 28x28."""
    x = _gray(image)
    h, w = x.shape
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    inverted = bool(np.median(border) > 0.5)
    if inverted:
        x = 1.0 - x
    background, peak = float(np.median(x)), float(x.max())
    if peak - background < MIN_CONTRAST:
        return Prepared(np.zeros((SIZE, SIZE), np.uint8), empty=True, digit_like=False, inverted=inverted)
    x = np.clip((x - background) / (peak - background), 0.0, 1.0)
    x[x < NOISE_FLOOR] = 0.0

    # The bounding box of the clear ink fits the 20x20 box; the faint anti-aliased edge
    # around it comes along (a margin of one output pixel), as it does in MNIST.
    rows, cols = np.flatnonzero((x >= INK_THRESHOLD).any(1)), np.flatnonzero((x >= INK_THRESHOLD).any(0))
    ink_h, ink_w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    extent = max(ink_h / h, ink_w / w)
    scale = BOX / max(ink_h, ink_w)
    margin = int(np.ceil(1 / scale))
    y0, y1 = max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, h)
    x0, x1 = max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, w)
    crop = x[y0:y1, x0:x1]
    new_h = min(SIZE, max(1, round(crop.shape[0] * scale)))
    new_w = min(SIZE, max(1, round(crop.shape[1] * scale)))
    # Area averaging when shrinking is the anti-aliasing; bilinear when a tiny drawing grows.
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    box = np.asarray(Image.fromarray(crop.astype(np.float32), mode="F").resize((new_w, new_h), resample))
    box = np.clip(box / max(float(box.max()), 1e-6), 0.0, 1.0)

    # Centre of mass to the field's centre (14, 14), shifted only as far as keeps the ink inside.
    total = box.sum()
    com_y = (box.sum(1) * np.arange(new_h)).sum() / total
    com_x = (box.sum(0) * np.arange(new_w)).sum() / total
    top = int(np.clip(round(SIZE / 2 - com_y), 0, SIZE - new_h))
    left = int(np.clip(round(SIZE / 2 - com_x), 0, SIZE - new_w))
    out = np.zeros((SIZE, SIZE), np.float32)
    out[top : top + new_h, left : left + new_w] = box

    ink_share = float((box > 0.5).mean())
    digit_like = extent >= MIN_INK_EXTENT and ink_share < 0.75
    return Prepared(np.round(out * 255).astype(np.uint8), empty=False, digit_like=digit_like, inverted=inverted)
