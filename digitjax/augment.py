"""Data augmentation inside the jitted step, and the test-time views evaluation averages over.

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


def affine_maps(angle_B: jax.Array, zoom_B: jax.Array, shift_Bx2: jax.Array, h: int, w: int) -> jax.Array:
    """Each image's inverse map (output pixel -> where in the source to sample) as a 2x3 matrix
    over (y, x, 1): rotation by `angle_B` (radians) and zoom about the centre, then a shift."""
    cos_B, sin_B = jnp.cos(angle_B) / zoom_B, jnp.sin(angle_B) / zoom_B
    rot_Bx2x2 = jnp.stack([jnp.stack([cos_B, sin_B], -1), jnp.stack([-sin_B, cos_B], -1)], -2)
    centre_2 = jnp.array([(h - 1) / 2, (w - 1) / 2])
    offset_Bx2 = centre_2 - jnp.einsum("bij,bj->bi", rot_Bx2x2, centre_2 + shift_Bx2)
    return jnp.concatenate([rot_Bx2x2, offset_Bx2[..., None]], -1)


def random_affines(key: jax.Array, aug: Augment, b: int, h: int, w: int) -> jax.Array:
    """`affine_maps` drawn uniformly within `aug`'s ranges, one per image."""
    k_rot, k_scale, k_shift = jax.random.split(key, 3)
    angle_B = jax.random.uniform(k_rot, (b,), minval=-1, maxval=1) * jnp.deg2rad(aug.rotate_deg)
    scale_B = 1 + jax.random.uniform(k_scale, (b,), minval=-1, maxval=1) * aug.scale
    shift_Bx2 = jax.random.uniform(k_shift, (b, 2), minval=-1, maxval=1) * aug.shift_px
    return affine_maps(angle_B, scale_B, shift_Bx2, h, w)


def source_coordinates(affine_Bx2x3: jax.Array, h: int, w: int, frame: int = 0) -> jax.Array:
    """Where each output pixel samples its source, (y, x) by image: `affine_Bx2x3` applied to the
    pixel grid, less `frame` pixels on each border."""
    ys, xs = jnp.arange(frame, h - frame, dtype=jnp.float32), jnp.arange(frame, w - frame, dtype=jnp.float32)
    yy_HxW, xx_HxW = jnp.meshgrid(ys, xs, indexing="ij")
    grid_3xP = jnp.stack([yy_HxW.ravel(), xx_HxW.ravel(), jnp.ones(yy_HxW.size)])
    # A matmul, not elementwise math: XLA fused the elementwise form (the draws, sin, cos) into
    # each of map_coordinates' four gathers, recomputing it per pixel four times (the gathers
    # took most of an augmented step; experiments/RESULTS.md); a dot's result is computed once.
    return jnp.einsum("bkc,cp->bkp", affine_Bx2x3, grid_3xP).reshape(-1, 2, *yy_HxW.shape)


def bilinear(x_BxHxWx1: jax.Array, src_Bx2xHxW: jax.Array) -> jax.Array:
    """Each image sampled at its source coordinates; pixels from outside are 0 (no ink)."""
    sample = jax.vmap(lambda img, y, x: map_coordinates(img, [y, x], order=1, mode="constant", cval=0.0))
    return sample(x_BxHxWx1[..., 0], src_Bx2xHxW[:, 0], src_Bx2xHxW[:, 1])[..., None]


def random_maps(key: jax.Array, aug: Augment, x_BxHxWx1: jax.Array, frame: int = 0) -> jax.Array:
    """Each image of the batch through its own random map. The `frame` pixels on each border,
    which the model never looks at (`model.ignored_border`), are left black instead of sampled:
    the same images where the model looks, and a quarter fewer samples for 2 of 28 pixels."""
    b, h, w, _ = x_BxHxWx1.shape
    k_affine, k_elastic = jax.random.split(key)
    src_Bx2xHxW = source_coordinates(random_affines(k_affine, aug, b, h, w), h, w, frame)
    if aug.elastic_px:
        grid = jax.random.uniform(k_elastic, (b, 2, ELASTIC_GRID, ELASTIC_GRID), minval=-1, maxval=1)
        displacement_Bx2xHxW = jax.image.resize(grid * aug.elastic_px, (b, 2, h, w), "cubic")
        src_Bx2xHxW = src_Bx2xHxW + displacement_Bx2xHxW[:, :, frame : h - frame, frame : w - frame]
    return jnp.pad(bilinear(x_BxHxWx1, src_Bx2xHxW), ((0, 0), (frame, frame), (frame, frame), (0, 0)))


# Test-time views: the image and its four 1-pixel shifts.
TEST_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


@dataclasses.dataclass(frozen=True)
class TestViews:
    """What evaluation averages its probabilities over: the image, its four 1-pixel shifts
    (`shifts`), and the image rotated and zoomed by each (degrees, zoom) of `warps`."""

    shifts: bool = False
    warps: tuple[tuple[float, float], ...] = ()

    @classmethod
    def from_config(cls, config) -> TestViews | None:
        # A restored config may hold the pairs as lists: tuples keep the views hashable (static).
        warps = tuple((float(deg), float(zoom)) for deg, zoom in config.get("test_time_warps", ()))
        views = cls(bool(config.get("test_time_shifts", False)), warps)
        return views if views.shifts or views.warps else None

    def of(self, x_BxHxWx1: jax.Array) -> list[jax.Array]:
        """The views of a batch, the image itself first."""
        shifts = TEST_SHIFTS[1:] if self.shifts else ()
        return [x_BxHxWx1, *(shifted(x_BxHxWx1, *s) for s in shifts), *(warped(x_BxHxWx1, *w) for w in self.warps)]


def shifted(x_BxHxWxC: jax.Array, dy: int, dx: int) -> jax.Array:
    """The image moved by (dy, dx) pixels, zeros shifted in."""
    h, w = x_BxHxWxC.shape[1:3]
    padded = jnp.pad(x_BxHxWxC, ((0, 0), (abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)))
    return padded[:, abs(dy) - dy : abs(dy) - dy + h, abs(dx) - dx : abs(dx) - dx + w]


def warped(x_BxHxWx1: jax.Array, degrees: float, zoom: float) -> jax.Array:
    """The image rotated by `degrees` and zoomed by `zoom` about its centre, sampled bilinearly."""
    b, h, w, _ = x_BxHxWx1.shape
    angle_B, zoom_B = jnp.full((b,), jnp.deg2rad(degrees)), jnp.full((b,), zoom)
    affine_Bx2x3 = affine_maps(angle_B, zoom_B, jnp.zeros((b, 2)), h, w)
    return bilinear(x_BxHxWx1, source_coordinates(affine_Bx2x3, h, w))
