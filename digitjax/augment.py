"""Data augmentation inside the jitted step, and test-time shifts for evaluation.

Each training image gets its own random affine map (rotation, scale, shift) and, optionally,
a smooth elastic displacement, sampled bilinearly: the data never leaves the device and the
draws derive from the run's key and the step, so a resumed run sees the same images.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates


@dataclasses.dataclass(frozen=True)
class Augment:
    """Ranges of the random maps (uniform in +-range); all zero is no augmentation."""

    rotate_deg: float = 0.0
    scale: float = 0.0
    shift_px: float = 0.0
    elastic_px: float = 0.0

    @classmethod
    def from_config(cls, config) -> Augment | None:
        aug = cls(**{f.name: float(config.get(f"augment_{f.name}", 0.0)) for f in dataclasses.fields(cls)})
        return aug if any(dataclasses.astuple(aug)) else None


ELASTIC_GRID = 4  # control points per side of the elastic displacement; coarse means smooth


def random_maps(key: jax.Array, aug: Augment, x_BxHxWx1: jax.Array) -> jax.Array:
    """Each image of the batch through its own random map; pixels from outside are 0 (no ink)."""
    b, h, w, _ = x_BxHxWx1.shape
    k_rot, k_scale, k_shift, k_elastic = jax.random.split(key, 4)
    angle_B = jax.random.uniform(k_rot, (b,), minval=-1, maxval=1) * jnp.deg2rad(aug.rotate_deg)
    scale_B = 1 + jax.random.uniform(k_scale, (b,), minval=-1, maxval=1) * aug.scale
    shift_Bx2 = jax.random.uniform(k_shift, (b, 2), minval=-1, maxval=1) * aug.shift_px
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy_HxW, xx_HxW = jnp.meshgrid(jnp.arange(h) - cy, jnp.arange(w) - cx, indexing="ij")
    # The inverse map: for each output pixel, where in the source image to sample.
    dy_BxHxW = yy_HxW - shift_Bx2[:, 0, None, None]
    dx_BxHxW = xx_HxW - shift_Bx2[:, 1, None, None]
    cos, sin, s = (v[:, None, None] for v in (jnp.cos(angle_B), jnp.sin(angle_B), scale_B))
    src_y = (cos * dy_BxHxW + sin * dx_BxHxW) / s + cy
    src_x = (-sin * dy_BxHxW + cos * dx_BxHxW) / s + cx
    if aug.elastic_px:
        grid = jax.random.uniform(k_elastic, (b, ELASTIC_GRID, ELASTIC_GRID, 2), minval=-1, maxval=1)
        field_BxHxWx2 = jax.image.resize(grid * aug.elastic_px, (b, h, w, 2), "cubic")
        src_y, src_x = src_y + field_BxHxWx2[..., 0], src_x + field_BxHxWx2[..., 1]
    sample = jax.vmap(lambda img, y, x: map_coordinates(img, [y, x], order=1, mode="constant", cval=0.0))
    return sample(x_BxHxWx1[..., 0], src_y, src_x)[..., None]


# Test-time views: the image and its four 1-pixel shifts.
TEST_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def shifted(x_BxHxWxC: jax.Array, dy: int, dx: int) -> jax.Array:
    """The image moved by (dy, dx) pixels, zeros shifted in."""
    h, w = x_BxHxWxC.shape[1:3]
    padded = jnp.pad(x_BxHxWxC, ((0, 0), (abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)))
    return padded[:, abs(dy) - dy : abs(dy) - dy + h, abs(dx) - dx : abs(dx) - dx + w]
