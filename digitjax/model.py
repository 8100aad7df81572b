"""The model zoo: small Flax NNX CNNs for 28x28 images, a family picked by `config.model` and
sized by `config.model_kwargs`.

Each model marks the layers the canvas shows with `layers.show` (digitjax/layers.py); the last
one marked, the last hidden layer, is the embedding its nearest training digits are found in.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from digitjax import layers
from digitjax.ops.conv import Conv

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

    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        conv: str = "auto",
        widths: tuple[int, int] = (32, 64),
        hidden: int = 256,
        dropout: tuple[float, float] = (0.25, 0.5),
    ):
        w1, w2 = widths
        self.conv1 = Conv(1, w1, (3, 3), padding="VALID", route=conv, rngs=rngs)
        self.conv2 = Conv(w1, w2, (3, 3), padding="VALID", route=conv, rngs=rngs)
        self.drop1 = nnx.Dropout(dropout[0])
        side = (INPUT_SHAPE[0] - 4) // 2  # two VALID 3x3 convs, one pool
        self.dense1 = nnx.Linear(side * side * w2, hidden, rngs=rngs)
        self.drop2 = nnx.Dropout(dropout[1])
        self.dense2 = nnx.Linear(hidden, NUM_CLASSES, rngs=rngs)

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

    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        conv: str = "auto",
        widths: tuple[int, int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.25,
    ):
        w1, w2 = widths
        self.conv1 = Conv(1, w1, (3, 3), use_bias=False, route=conv, rngs=rngs)
        self.bn1 = nnx.BatchNorm(w1, momentum=0.9, rngs=rngs)
        self.conv2 = Conv(w1, w2, (3, 3), use_bias=False, route=conv, rngs=rngs)
        self.bn2 = nnx.BatchNorm(w2, momentum=0.9, rngs=rngs)
        self.drop = nnx.Dropout(dropout)
        side = INPUT_SHAPE[0] // 4  # two pools
        self.dense1 = nnx.Linear(side * side * w2, hidden, rngs=rngs)
        self.dense2 = nnx.Linear(hidden, NUM_CLASSES, rngs=rngs)

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
    """For the best accuracy: `blocks` blocks of two batch-normed 3x3 convs, each block pooled and
    twice as wide as the one before, then a dense layer; ~5x Fast's FLOPs at the defaults."""

    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        conv: str = "auto",
        width: int = 32,
        blocks: int = 2,
        hidden: int = 256,
        dropout: float = 0.3,
    ):
        outs = [width * 2**b for b in range(blocks) for _ in range(2)]
        ins = [1, *outs[:-1]]
        self.convs = nnx.List([Conv(i, o, (3, 3), use_bias=False, route=conv, rngs=rngs) for i, o in zip(ins, outs)])
        self.norms = nnx.List([nnx.BatchNorm(o, momentum=0.9, rngs=rngs) for o in outs])
        self.drop = nnx.Dropout(dropout)
        side = INPUT_SHAPE[0]
        for _ in range(blocks):
            side //= 2
        self.dense1 = nnx.Linear(side * side * outs[-1], hidden, rngs=rngs)
        self.dense2 = nnx.Linear(hidden, NUM_CLASSES, rngs=rngs)

    def __call__(self, x_BxHxWx1: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = x_BxHxWx1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = layers.show(f"conv{i + 1}", nnx.relu(norm(conv(x))), conv.kernel)
            if i % 2:
                x = layers.show(f"pool{i // 2 + 1}", max_pool_2x2(x))
        x = self.drop(x.reshape(x.shape[0], -1), rngs=rngs)
        x = self.drop(layers.show("dense1", nnx.relu(self.dense1(x))), rngs=rngs)
        return self.dense2(x)


# A config names a family (`config.model`) and sets its sizes (`config.model_kwargs`).
FAMILIES: dict[str, Callable[..., nnx.Module]] = {"seed": Seed, "fast": Fast, "s2d": SpaceToDepth, "deep": Deep}
# Names earlier configs gave one family at set sizes: runs trained under them restore by them.
ALIASES: dict[str, tuple[str, dict]] = {
    "small": ("fast", {"widths": (8, 24)}),
    "s2d24": ("s2d", {"crop": 2, "widths": (24, 32), "bn1_affine": False}),
    "s2d_wide": ("s2d", {"widths": (32, 64)}),
    "s2d24_wide": ("s2d", {"crop": 2, "widths": (32, 64), "bn1_affine": False}),
    "s2d24_wider": ("s2d", {"crop": 2, "widths": (32, 96), "bn1_affine": False}),
    "s2d24_wider256": ("s2d", {"crop": 2, "widths": (32, 96), "bn1_affine": False, "hidden": 256}),
}


def resolve(name: str) -> Callable[..., nnx.Module]:
    """A model class by family name: one of FAMILIES, or `package.module:Name` for one defined
    anywhere importable (a fork's own, e.g. `experiments.custom_model:TinyCNN`)."""
    from digitjax.errors import UserError

    if name in FAMILIES:
        return FAMILIES[name]
    module_name, _, attr = name.partition(":")
    if not attr:
        raise UserError(
            f"Unknown model {name!r}; the config's `model` must be one of {sorted(FAMILIES)} (older runs' "
            f"{sorted(ALIASES)} restore too), or `package.module:Name` for a model defined outside digitjax."
        )
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(
            f"Could not load model {name!r} ({e}). Check that {module_name} is importable from where the "
            f"command runs (e.g. a module under experiments/) and defines {attr}."
        )


@dataclasses.dataclass(frozen=True)
class Spec:
    """A model as a checkpoint records it: its family and every size argument, defaults included."""

    family: str
    kwargs: dict

    def describe(self) -> dict:
        return {"family": self.family, "kwargs": self.kwargs}


def _sizes(cls: Callable[..., nnx.Module]) -> dict:
    """The size arguments a family takes, with their defaults (all but rngs and conv)."""
    params = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in ("rngs", "conv")}


def _as_tuples(value):
    """JSON and ConfigDicts hand back lists where a config wrote tuples."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def spec(name: str, kwargs: dict | None = None) -> Spec:
    """The full spec of model `name` (a family, an alias or `package.module:Name`) with `kwargs`
    changing its sizes."""
    from digitjax.errors import UserError

    family, base = ALIASES.get(name, (name, {}))
    sizes = _sizes(resolve(family))
    changes = {**base, **{k: _as_tuples(v) for k, v in (kwargs or {}).items()}}
    if unknown := sorted(set(changes) - set(sizes)):
        raise UserError(
            f"model_kwargs {unknown} are not sizes of model {name!r}, which takes {sorted(sizes)}. When you change "
            f"the config's model, set its model_kwargs to that family's (experiments/default.py shows each)."
        )
    return Spec(family, {**sizes, **changes})


def spec_of(config) -> Spec:
    """The model spec of a config (configs written before `model_kwargs` name an alias or a family)."""
    kwargs = config.get("model_kwargs") or {}
    return spec(config.model, kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs))


def ignored_border(model: nnx.Module) -> int:
    """Pixels on each border of the 28x28 input that `model` never looks at: a `crop` it
    declares (SpaceToDepth's; a model of your own may declare one too), else 0. Augmentation
    leaves them unsampled."""
    return int(getattr(model, "crop", 0))


def create(name: str | Spec, seed: int, conv: str = "auto", **kwargs) -> nnx.Module:
    """Builds a model (a Spec, or a name as `spec` takes it, with `kwargs`) with parameters drawn
    from `seed`, its convolutions computed by route `conv` (digitjax/ops/conv.py)."""
    model = name if isinstance(name, Spec) else spec(name, kwargs)
    return resolve(model.family)(rngs=nnx.Rngs(params=seed), conv=conv, **model.kwargs)
