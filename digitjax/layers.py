"""A model's layers as the canvas shows them: the values its `__call__` marks with `show`.

A model marks what a person should see, in call order:

    x = layers.show("conv1", nnx.relu(self.conv1(x)), kernel=self.conv1.kernel)
    x = layers.show("pool1", max_pool_2x2(x))
    x = layers.show("dense1", nnx.relu(self.dense1(x)))

`show` returns its value unchanged and records nothing unless `record` is tracing the model, so
training pays nothing for it. The last layer shown is the model's embedding (the nearest
training digits are searched in it): mark the last hidden layer last.
"""

from __future__ import annotations

import contextvars
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# While `record` runs: the (name, value, kernel) of each `show`, in call order.
_recording: contextvars.ContextVar[list | None] = contextvars.ContextVar("digitjax_layers", default=None)


def show(name: str, value: jax.Array, kernel: nnx.Param | jax.Array | None = None) -> jax.Array:
    """Marks `value` (maps BxHxWxC or units BxU) as the layer `name`; `kernel` (HWIO) made its maps."""
    if (recording := _recording.get()) is not None:
        recording.append((name, value, None if kernel is None else kernel[...]))
    return value


def record(model: nnx.Module, x_BxHxWx1: jax.Array) -> tuple[jax.Array, list[tuple[str, jax.Array, jax.Array | None]]]:
    """The model's logits and every layer it shows, as (name, value, kernel), in call order."""
    recorded: list = []
    token = _recording.set(recorded)
    try:
        logits_BxC = model(x_BxHxWx1)
    finally:
        _recording.reset(token)
    return logits_BxC, recorded


@dataclasses.dataclass(frozen=True)
class Layer:
    """What one shown layer is, independent of the input: the page lays itself out from these."""

    name: str
    kind: str  # "maps" (HxWxC feature maps) or "units" (a vector)
    shape: tuple[int, ...]  # of one example: (H, W, C) or (U,)
    kernel_HWIO: np.ndarray | None  # the convolution kernel that made the maps, if one did

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape),
            "has_kernel": self.kernel_HWIO is not None,
        }


def describe(model: nnx.Module, input_shape_HWC: tuple[int, int, int]) -> list[Layer]:
    """The layers `model` shows for one input of `input_shape_HWC` (empty for a model that marks
    none), found by tracing it: nothing of the forward pass runs, only the kernels are read."""
    graphdef, state = nnx.split(model)
    names: list[str] = []

    def trace(state):
        _, recorded = record(nnx.merge(graphdef, state), jnp.zeros((1, *input_shape_HWC), jnp.float32))
        names[:] = [name for name, _, _ in recorded]
        return [value for _, value, _ in recorded], [kernel for _, _, kernel in recorded]

    values, _ = jax.eval_shape(trace, state)
    _, kernels = jax.jit(trace)(state)  # XLA drops the forward pass: only the kernels are outputs
    layers = []
    for name, value, kernel in zip(names, values, kernels):
        if value.ndim not in (2, 4):
            raise ValueError(f"layers.show({name!r}): expected maps BxHxWxC or units BxU, got shape {value.shape}")
        kind = "maps" if value.ndim == 4 else "units"
        layers.append(Layer(name, kind, tuple(value.shape[1:]), None if kernel is None else np.asarray(kernel)))
    if len(set(names)) != len(names):
        raise ValueError(f"layers.show names must be unique within a model; got {names}")
    return layers


def embedding(recorded: list[tuple[str, jax.Array, jax.Array | None]]) -> jax.Array:
    """The last layer shown, flattened to BxD: what nearest neighbours are searched in."""
    value = recorded[-1][1]
    return value.reshape(value.shape[0], -1)
