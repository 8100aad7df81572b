"""The model zoo: small Flax NNX CNNs for 28x28 digits, picked by name from a config."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from digitjax import onednn, winograd

NUM_CLASSES = 10


def to_input(images_BxHxW: jax.Array) -> jax.Array:
    """uint8 pixels (255 = ink) -> the float input every model takes: [0, 1], one channel."""
    return (images_BxHxW.astype(jnp.float32) / 255.0)[..., None]


def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, as a reshape and a max: its gradient is a cheap elementwise op,
    where reduce_window's select-and-scatter costs the seed model's CPU step 11%."""
    b, h, w, c = x_BxHxWxC.shape
    return x_BxHxWxC[:, : h - h % 2, : w - w % 2].reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Conv(nnx.Conv):
    """nnx.Conv (same parameters) computed other ways than XLA's CPU convolutions, which reach
    ~1/6 of the matmul peak on these small images, and are ~7x slower still inside the
    trainer's fori_loop.

    On a CPU, oneDNN's convolutions come first (`onednn.conv`; Winograd F(4x4, 3x3) where the
    channels fill blocks of 16), where digitjax could build them and oneDNN has a fast kernel
    for the shape: they train the seed model ~1.4x faster than the matmuls below. Otherwise a
    3x3 kernel over more than one input channel with an even output goes through
    `winograd.conv3x3` (2.25x fewer multiplies; not measured on accelerators, so not used
    there); any other gathers the kh*kw shifted views into the channel axis for a single dot
    (exact). All three copy the input, a copy that grows with the batch: past MAX_BATCH
    (evaluation's large batches) XLA's own convolution is faster again (5x than the matmuls at
    1,000 images), and for the single images of serving it is slightly faster than the
    matmuls too, so it takes over for both.
    """

    MAX_BATCH = 256

    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        kh, kw, cin, cout = self.kernel.shape
        batch = x_BxHxWxC.shape[0]
        unit = self.strides in (1, (1, 1)) and self.kernel_dilation in (1, (1, 1))
        if not unit or not isinstance(self.padding, str) or self.padding not in ("SAME", "VALID"):
            return super().__call__(x_BxHxWxC)
        same = kh // 2 if kh == kw and kh % 2 else None  # symmetric 'SAME' padding
        pad = {"VALID": 0, "SAME": same}[self.padding]
        float32 = x_BxHxWxC.dtype == self.kernel.dtype == jnp.float32  # what the FFI handlers take
        fits = pad is not None and float32 and batch <= self.MAX_BATCH
        if fits and onednn.supports(*x_BxHxWxC.shape, cout, kh, kw, pad):
            return onednn.conv(x_BxHxWxC, self.kernel[...], self.bias[...] if self.bias is not None else None, pad)
        if not 1 < batch <= self.MAX_BATCH:
            return super().__call__(x_BxHxWxC)
        if self.padding == "SAME":
            x_BxHxWxC = jnp.pad(x_BxHxWxC, ((0, 0), (kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2), (0, 0)))
        h, w = x_BxHxWxC.shape[1] - kh + 1, x_BxHxWxC.shape[2] - kw + 1
        if (kh, kw) == (3, 3) and cin > 1 and h % 2 == 0 and w % 2 == 0 and jax.default_backend() == "cpu":
            y = winograd.conv3x3(x_BxHxWxC, self.kernel[...])
        else:
            # Stacked a row of shifts at a time: XLA's CPU fusion leaves a concatenate of more
            # than 8 operands as a separate, single-threaded copy.
            rows = [jnp.stack([x_BxHxWxC[:, i : i + h, j : j + w] for j in range(kw)], 3) for i in range(kh)]
            columns = jnp.stack(rows, 3).reshape(*x_BxHxWxC.shape[:1], h, w, kh * kw * cin)
            y = columns @ self.kernel[...].reshape(kh * kw * cin, cout)
        return y + self.bias[...] if self.bias is not None else y


class Seed(nnx.Module):
    """The classic Keras MNIST CNN: two 3x3 convs, max-pool, dropout, dense 256, dropout."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = Conv(1, 32, (3, 3), padding="VALID", rngs=rngs)
        self.conv2 = Conv(32, 64, (3, 3), padding="VALID", rngs=rngs)
        self.drop1 = nnx.Dropout(0.25)
        self.dense1 = nnx.Linear(12 * 12 * 64, 256, rngs=rngs)
        self.drop2 = nnx.Dropout(0.5)
        self.dense2 = nnx.Linear(256, NUM_CLASSES, rngs=rngs)

    def __call__(self, x_BxHxWx1: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = nnx.relu(self.conv1(x_BxHxWx1))
        x = nnx.relu(self.conv2(x))
        x = max_pool_2x2(x)
        x = self.drop1(x, rngs=rngs)
        x = nnx.relu(self.dense1(x.reshape(x.shape[0], -1)))
        x = self.drop2(x, rngs=rngs)
        return self.dense2(x)


class Fast(nnx.Module):
    """A third of Seed's FLOPs: 'same' convs with a pool after each, batch norm for a high
    learning rate, and a narrow dense head."""

    def __init__(self, *, rngs: nnx.Rngs, widths: tuple[int, int] = (32, 64)):
        w1, w2 = widths
        self.conv1 = Conv(1, w1, (3, 3), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(w1, momentum=0.9, rngs=rngs)
        self.conv2 = Conv(w1, w2, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(w2, momentum=0.9, rngs=rngs)
        self.drop = nnx.Dropout(0.25)
        self.dense1 = nnx.Linear(7 * 7 * w2, 128, rngs=rngs)
        self.dense2 = nnx.Linear(128, NUM_CLASSES, rngs=rngs)

    def __call__(self, x_BxHxWx1: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x_BxHxWx1)))
        x = max_pool_2x2(x)
        x = nnx.relu(self.bn2(self.conv2(x)))
        x = max_pool_2x2(x)
        x = self.drop(x.reshape(x.shape[0], -1), rngs=rngs)
        x = nnx.relu(self.dense1(x))
        return self.dense2(x)


class Deep(nnx.Module):
    """For the best accuracy: two blocks of two batch-normed 3x3 convs, each block pooled,
    then dense 256; ~5x Fast's FLOPs."""

    def __init__(self, *, rngs: nnx.Rngs, width: int = 32):
        widths = [(1, width), (width, width), (width, 2 * width), (2 * width, 2 * width)]
        self.convs = nnx.List([Conv(i, o, (3, 3), use_bias=False, rngs=rngs) for i, o in widths])
        self.norms = nnx.List([nnx.BatchNorm(o, momentum=0.9, rngs=rngs) for _, o in widths])
        self.drop = nnx.Dropout(0.3)
        self.dense1 = nnx.Linear(7 * 7 * 2 * width, 256, rngs=rngs)
        self.dense2 = nnx.Linear(256, NUM_CLASSES, rngs=rngs)

    def __call__(self, x_BxHxWx1: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = x_BxHxWx1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = nnx.relu(norm(conv(x)))
            if i % 2:
                x = max_pool_2x2(x)
        x = self.drop(x.reshape(x.shape[0], -1), rngs=rngs)
        x = self.drop(nnx.relu(self.dense1(x)), rngs=rngs)
        return self.dense2(x)


MODELS: dict[str, Callable[..., nnx.Module]] = {
    "seed": Seed,
    "fast": Fast,
    # A sixth of Fast's FLOPs, for the least time to 99% on a CPU (experiments/fast.py).
    "small": functools.partial(Fast, widths=(8, 24)),
    "deep": Deep,
}


def create(name: str, seed: int, **kwargs) -> nnx.Module:
    """Builds a model of the zoo with parameters drawn from `seed`."""
    from digitjax.errors import UserError

    if name not in MODELS:
        raise UserError(f"Unknown model {name!r}; the config's `model` must be one of {sorted(MODELS)}.")
    return MODELS[name](rngs=nnx.Rngs(params=seed), **kwargs)
