"""A whitened, frozen first convolution (config `whiten_conv1`), after Keller Jordan's airbench:
conv1's filters are the training images' principal patch directions, each scaled to unit
variance and paired with its negation (so the ReLU keeps both signs), and are never trained.
The later layers then start on decorrelated features, and the step skips conv1's weight gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from digitjax import model as model_lib
from digitjax.errors import UserError

NUM_IMAGES = 10_000  # the first training images (1.96 M patches of 14 x 14 ones)
EPS = 5e-4  # added to each variance: the weakest directions are mostly pixel noise


def patches(x_BxHxWxC: jax.Array, size: int) -> jax.Array:
    """Every size x size patch of a "SAME"-padded image, flattened in a conv kernel's (H, W, C) order."""
    b, h, w, c = x_BxHxWxC.shape
    lo = (size - 1) // 2
    x = jnp.pad(x_BxHxWxC, ((0, 0), (lo, size - 1 - lo), (lo, size - 1 - lo), (0, 0)))
    shifted = [x[:, dy : dy + h, dx : dx + w] for dy in range(size) for dx in range(size)]
    return jnp.stack(shifted, axis=3).reshape(b * h * w, size * size * c)


@functools.partial(jax.jit, static_argnums=1)
def filters(x_BxHxWxC: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
    """A kernel of `kernel_shape` (H, W, C, 2k): the k leading principal directions of the input's
    patches, each divided by its standard deviation, then the same k negated."""
    size, _, _, out = kernel_shape
    if out % 2 or kernel_shape[0] != kernel_shape[1]:
        raise UserError(f"whiten_conv1 needs a square conv1 with an even number of filters, not {kernel_shape}.")
    p_PxD = patches(x_BxHxWxC, size)
    p_PxD = p_PxD - p_PxD.mean(axis=0)
    variance_D, vectors_DxD = jnp.linalg.eigh(p_PxD.T @ p_PxD / p_PxD.shape[0])
    k = out // 2
    if k > variance_D.shape[0]:
        raise UserError(f"conv1 has {out} filters; whiten_conv1 gives at most {2 * variance_D.shape[0]}.")
    lead_Dxk = vectors_DxD[:, ::-1][:, :k] / jnp.sqrt(variance_D[::-1][:k] + EPS)
    return jnp.concatenate([lead_Dxk, -lead_Dxk], axis=1).reshape(kernel_shape)


def whiten_conv1(model: nnx.Module, images_NxHxW: jax.Array) -> None:
    """Sets `model.conv1`'s kernel to `filters` of the first NUM_IMAGES training images, as conv1 sees them."""
    conv1 = getattr(model, "conv1", None)
    if conv1 is None:
        raise UserError(f"whiten_conv1 needs a model with a conv1 layer; {type(model).__name__} has none.")
    x = model_lib.to_input(images_NxHxW[:NUM_IMAGES])
    x = model.conv1_input(x) if hasattr(model, "conv1_input") else x
    conv1.kernel[...] = filters(x, conv1.kernel.shape).astype(conv1.kernel[...].dtype)


def frozen_conv1(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` for every parameter but conv1's kernel, which gets no updates (nor Adam moments)."""

    def label(path, _):
        names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        return "frozen" if names[:2] == ["conv1", "kernel"] else "trained"

    return optax.multi_transform(
        {"trained": tx, "frozen": optax.set_to_zero()}, lambda params: jax.tree_util.tree_map_with_path(label, params)
    )
