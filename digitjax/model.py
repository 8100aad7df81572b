"""The model zoo: small Flax NNX CNNs for 28x28 digits, picked by name from a config.

Each model marks the layers the canvas shows with `layers.show` (digitjax/layers.py); the last
one marked, the last hidden layer, is the embedding its nearest training digits are found in.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from digitjax import layers
from digitjax.conv import Conv

NUM_CLASSES = 10
INPUT_SHAPE = (28, 28, 1)  # what `to_input` makes of one image: HWC


def to_input(images_BxHxW: jax.Array) -> jax.Array:
    """uint8 pixels (255 = ink) -> the float input every model takes: [0, 1], one channel."""
    return (images_BxHxW.astype(jnp.float32) / 255.0)[..., None]


def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, as a reshape and a max: its gradient is a cheap elementwise op,
    where reduce_window's select-and-scatter costs the seed model's CPU step 11%."""
    b, h, w, c = x_BxHxWxC.shape
    return x_BxHxWxC[:, : h - h % 2, : w - w % 2].reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Seed(nnx.Module):
    """The classic Keras MNIST CNN: two 3x3 convs, max-pool, dropout, dense 256, dropout."""

    def __init__(self, *, rngs: nnx.Rngs, conv: str = "auto"):
        self.conv1 = Conv(1, 32, (3, 3), padding="VALID", route=conv, rngs=rngs)
        self.conv2 = Conv(32, 64, (3, 3), padding="VALID", route=conv, rngs=rngs)
        self.drop1 = nnx.Dropout(0.25)
        self.dense1 = nnx.Linear(12 * 12 * 64, 256, rngs=rngs)
        self.drop2 = nnx.Dropout(0.5)
        self.dense2 = nnx.Linear(256, NUM_CLASSES, rngs=rngs)

    def __call__(self, x_BxHxWx1: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = layers.show("conv1", nnx.relu(self.conv1(x_BxHxWx1)), self.conv1.kernel)
        x = layers.show("conv2", nnx.relu(self.conv2(x)), self.conv2.kernel)
        x = layers.show("pool", max_pool_2x2(x))
        x = self.drop1(x, rngs=rngs)
        x = layers.show("dense1", nnx.relu(self.dense1(x.reshape(x.shape[0], -1))))
        x = self.drop2(x, rngs=rngs)
        return self.dense2(x)


def space_to_depth(x_BxHxWxC: jax.Array, r: int = 2) -> jax.Array:
    """Each r x r block of pixels as r*r channels of one position: (B, H/r, W/r, r*r*C)."""
    b, h, w, c = x_BxHxWxC.shape
    x = x_BxHxWxC.reshape(b, h // r, r, w // r, r, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // r, w // r, r * r * c)


class Fast(nnx.Module):
    """A third of Seed's FLOPs: 'same' convs with a pool after each, batch norm for a high
    learning rate, and a narrow dense head."""

    def __init__(self, *, rngs: nnx.Rngs, conv: str = "auto", widths: tuple[int, int] = (32, 64)):
        w1, w2 = widths
        self.conv1 = Conv(1, w1, (3, 3), use_bias=False, route=conv, rngs=rngs)
        self.bn1 = nnx.BatchNorm(w1, momentum=0.9, rngs=rngs)
        self.conv2 = Conv(w1, w2, (3, 3), use_bias=False, route=conv, rngs=rngs)
        self.bn2 = nnx.BatchNorm(w2, momentum=0.9, rngs=rngs)
        self.drop = nnx.Dropout(0.25)
        self.dense1 = nnx.Linear(7 * 7 * w2, 128, rngs=rngs)
        self.dense2 = nnx.Linear(128, NUM_CLASSES, rngs=rngs)

    def __call__(self, x_BxHxWx1: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = layers.show("conv1", nnx.relu(self.bn1(self.conv1(x_BxHxWx1))), self.conv1.kernel)
        x = layers.show("pool1", max_pool_2x2(x))
        x = layers.show("conv2", nnx.relu(self.bn2(self.conv2(x))), self.conv2.kernel)
        x = layers.show("pool2", max_pool_2x2(x))
        x = self.drop(x.reshape(x.shape[0], -1), rngs=rngs)
        x = layers.show("dense1", nnx.relu(self.dense1(x)))
        return self.dense2(x)


class SpaceToDepth(nnx.Module):
    """Fast at half the resolution: each 2x2 block of pixels is 4 channels of a 14x14 image, so
    conv1 runs at a quarter of the positions, and one pool leaves 7x7. On a 2-core CPU the
    activations' memory traffic, not the FLOPs, sets the step's time.

    `crop` pixels off each border first: MNIST's digits are centred in a 20x20 box, so the
    2-pixel frame (27% of the positions) holds 0.24% of the training set's ink. Without
    `bn1_affine`, bn1 only normalizes: with a frozen conv1 (whiten_conv1) nothing below conv2 is
    trained, and the step skips conv2's gradient with respect to its input. `hidden`: the units
    of the dense layer before the logits."""

    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        conv: str = "auto",
        widths: tuple[int, int] = (16, 32),
        dropout=0.0,
        crop: int = 0,
        bn1_affine: bool = True,
        hidden: int = 128,
    ):
        w1, w2 = widths
        self.crop = crop
        side = (INPUT_SHAPE[0] - 2 * crop) // 4  # after space-to-depth and one pool
        self.conv1 = Conv(4, w1, (3, 3), use_bias=False, route=conv, rngs=rngs)
        self.bn1 = nnx.BatchNorm(w1, momentum=0.9, use_bias=bn1_affine, use_scale=bn1_affine, rngs=rngs)
        self.conv2 = Conv(w1, w2, (3, 3), use_bias=False, route=conv, rngs=rngs)
        self.bn2 = nnx.BatchNorm(w2, momentum=0.9, rngs=rngs)
        self.drop = nnx.Dropout(dropout)
        self.dense1 = nnx.Linear(side * side * w2, hidden, rngs=rngs)
        self.dense2 = nnx.Linear(hidden, NUM_CLASSES, rngs=rngs)

    def conv1_input(self, x_BxHxWx1: jax.Array) -> jax.Array:
        """What conv1 convolves (digitjax/whitening.py derives its filters from it)."""
        c = self.crop
        return space_to_depth(x_BxHxWx1[:, c : x_BxHxWx1.shape[1] - c, c : x_BxHxWx1.shape[2] - c])

    def __call__(self, x_BxHxWx1: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = self.conv1_input(x_BxHxWx1)
        x = layers.show("conv1", nnx.relu(self.bn1(self.conv1(x))), self.conv1.kernel)
        x = layers.show("pool1", max_pool_2x2(x))
        x = layers.show("conv2", nnx.relu(self.bn2(self.conv2(x))), self.conv2.kernel)
        x = self.drop(x.reshape(x.shape[0], -1), rngs=rngs)
        x = layers.show("dense1", nnx.relu(self.dense1(x)))
        return self.dense2(x)


class Deep(nnx.Module):
    """For the best accuracy: two blocks of two batch-normed 3x3 convs, each block pooled,
    then dense 256; ~5x Fast's FLOPs."""

    def __init__(self, *, rngs: nnx.Rngs, conv: str = "auto", width: int = 32):
        widths = [(1, width), (width, width), (width, 2 * width), (2 * width, 2 * width)]
        self.convs = nnx.List([Conv(i, o, (3, 3), use_bias=False, route=conv, rngs=rngs) for i, o in widths])
        self.norms = nnx.List([nnx.BatchNorm(o, momentum=0.9, rngs=rngs) for _, o in widths])
        self.drop = nnx.Dropout(0.3)
        self.dense1 = nnx.Linear(7 * 7 * 2 * width, 256, rngs=rngs)
        self.dense2 = nnx.Linear(256, NUM_CLASSES, rngs=rngs)

    def __call__(self, x_BxHxWx1: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = x_BxHxWx1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = layers.show(f"conv{i + 1}", nnx.relu(norm(conv(x))), conv.kernel)
            if i % 2:
                x = layers.show(f"pool{i // 2 + 1}", max_pool_2x2(x))
        x = self.drop(x.reshape(x.shape[0], -1), rngs=rngs)
        x = self.drop(layers.show("dense1", nnx.relu(self.dense1(x))), rngs=rngs)
        return self.dense2(x)


MODELS: dict[str, Callable[..., nnx.Module]] = {
    "seed": Seed,
    "fast": Fast,
    # A sixth of Fast's FLOPs.
    "small": functools.partial(Fast, widths=(8, 24)),
    "deep": Deep,
    "s2d": SpaceToDepth,
    # The least time to 99% on a CPU (experiments/fast.py, whitened): the central 24x24 pixels.
    "s2d24": functools.partial(SpaceToDepth, crop=2, widths=(24, 32), bn1_affine=False),
    "s2d_wide": functools.partial(SpaceToDepth, widths=(32, 64)),
    # fast995.py's model until the wider one below; kept so that runs trained with it still restore.
    "s2d24_wide": functools.partial(SpaceToDepth, crop=2, widths=(32, 64), bn1_affine=False),
    # fast995.py's model until the one below; kept so that runs trained with it still restore.
    "s2d24_wider": functools.partial(SpaceToDepth, crop=2, widths=(32, 96), bn1_affine=False),
    # The least time to 99.5% on a CPU (experiments/fast995.py, whitened): s2d24_wider with a
    # dense layer of 256.
    "s2d24_wider256": functools.partial(SpaceToDepth, crop=2, widths=(32, 96), bn1_affine=False, hidden=256),
}


def resolve(name: str) -> Callable[..., nnx.Module]:
    """A model class by config name: one of MODELS, or `package.module:Name` for one defined
    anywhere importable (a fork's own, e.g. `experiments.custom_model:MLP`)."""
    from digitjax.errors import UserError

    if name in MODELS:
        return MODELS[name]
    module_name, _, attr = name.partition(":")
    if not attr:
        raise UserError(
            f"Unknown model {name!r}; the config's `model` must be one of {sorted(MODELS)}, "
            f"or `package.module:Name` for a model defined outside digitjax."
        )
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(
            f"Could not load model {name!r} ({e}). Check that {module_name} is importable from where the "
            f"command runs (e.g. a module under experiments/) and defines {attr}."
        )


def ignored_border(model: nnx.Module) -> int:
    """Pixels on each border of the 28x28 input that `model` never looks at: a `crop` it
    declares (SpaceToDepth's; a model of your own may declare one too), else 0. Augmentation
    leaves them unsampled."""
    return int(getattr(model, "crop", 0))


def create(name: str, seed: int, conv: str = "auto", **kwargs) -> nnx.Module:
    """Builds a model by config name (`resolve`) with parameters drawn from `seed`, its
    convolutions computed by route `conv` (digitjax/conv.py)."""
    return resolve(name)(rngs=nnx.Rngs(params=seed), conv=conv, **kwargs)
