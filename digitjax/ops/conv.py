"""2-D convolutions computed by the route a config names (its field `conv`).

    xla       nnx.Conv as it is: XLA's own convolution (cuDNN on GPUs, the TPU's on TPUs).
    onednn    oneDNN's blocked kernels through XLA's FFI (`digitjax/ops/onednn.py`): CPU, one device.
    winograd  Winograd's F(2x2, 3x3) as 16 matmuls (`digitjax/ops/winograd.py`): 3x3 kernels, even outputs.
    shifted   the kh*kw shifted views of the input gathered on the channel axis, then one matmul.
    auto      chosen per backend and shape by `_auto`, below.

XLA's CPU convolutions reach ~1/6 of the matmul peak on MNIST's small images, and are ~7x slower
still inside the trainer's fori_loop; the other routes are what digitjax trains with on CPUs
(experiments/RESULTS.md has the measurements behind `_auto`). Every route computes the same
function with the same parameters, so checkpoints do not depend on it; they round differently.

A convolution a route cannot compute (strides, dilation, feature groups, a mask, padding other
than 'SAME' or 'VALID', another dtype than float32) takes XLA's route under `auto`, and is
refused with a `UserError` under the route named explicitly: never computed wrong.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
from flax import nnx

from digitjax.errors import UserError
from digitjax.ops import onednn, winograd
from digitjax.ops.call import Call

ROUTES = ("auto", "xla", "onednn", "winograd", "shifted")
# Past this batch (evaluation's 1,000 images) XLA's own convolution is faster on a CPU: the other
# routes copy the input, a copy that grows with the batch (5x slower than XLA at 1,000 images).
MAX_BATCH = 256

_log = logging.getLogger(__name__)


def _same_pads(k: int) -> tuple[int, int]:
    return (k - 1) // 2, k // 2  # lax's 'SAME' at stride 1: the extra row goes after


def _unsupported(conv: nnx.Conv, x: jax.Array) -> str | None:
    ones = (1, (1, 1), None)
    checks = (
        (x.ndim != 4 or conv.kernel.ndim != 4, f"input of rank {x.ndim} or a kernel of rank {conv.kernel.ndim}"),
        (conv.strides not in ones, f"strides {conv.strides}"),
        (conv.input_dilation not in ones or conv.kernel_dilation not in ones, "dilation"),
        (conv.feature_group_count != 1, f"feature_group_count {conv.feature_group_count}"),
        (conv.mask is not None, "a kernel mask"),
        (not isinstance(conv.padding, str) or conv.padding not in ("SAME", "VALID"), f"padding {conv.padding!r}"),
        (
            {x.dtype, conv.kernel.dtype, jnp.dtype(conv.dtype or jnp.float32)} != {jnp.dtype(jnp.float32)},
            f"dtype {x.dtype} (the routes are float32)",
        ),
        (conv.precision is not None or conv.preferred_element_type is not None, "a set precision"),
    )
    return next((why for failed, why in checks if failed), None)


def describe(conv: nnx.Conv, x: jax.Array) -> Call:
    kh, kw, cin, cout = conv.kernel.shape if conv.kernel.ndim == 4 else (0, 0, 0, 0)
    unsupported = _unsupported(conv, x)
    pads = None
    if unsupported is None:
        pads = ((0, 0), (0, 0)) if conv.padding == "VALID" else (_same_pads(kh), _same_pads(kw))
    b, h, w = x.shape[:3] if x.ndim == 4 else (0, 0, 0)
    return Call(b, h, w, cin, cout, kh, kw, pads, unsupported)


def refusal(route: str, call: Call) -> str | None:
    """Why `route` cannot compute `call`, or None when it can."""
    if route == "xla":
        return None
    if call.unsupported:
        return call.unsupported
    if route == "onednn":
        if why := onednn.why_not():
            return f"oneDNN's convolutions are off: {why}"
        if call.even_pad is None:
            return "padding that is not the same on every side"
        fast, kernels = onednn.kernels(call)
        if not fast:
            return f"oneDNN has only slow reference kernels for it on this CPU ({kernels or 'none'})"
    if route == "winograd":
        oh, ow = call.out_hw
        if (call.kh, call.kw) != (3, 3) or oh % 2 or ow % 2:
            return f"Winograd F(2x2, 3x3) needs a 3x3 kernel and an even output ({call.kh}x{call.kw}, {oh}x{ow})"
    return None


def _auto(call: Call) -> tuple[str, str]:
    """(route, why) for `auto`: the fastest route measured on each backend (experiments/RESULTS.md,
    "Convolution routes"). On a CPU oneDNN's fast kernels beat digitjax's own on AVX-512 and on
    AVX2 alike, then Winograd beats the shifted copies where it applies."""
    backend = jax.default_backend()
    if backend != "cpu":
        return "xla", f"XLA's own on {backend} (no faster route measured there)"
    if call.unsupported:
        return "xla", f"only XLA computes {call.unsupported}"
    if call.batch > MAX_BATCH:
        return "xla", f"batch {call.batch} > {MAX_BATCH}"
    if refusal("onednn", call) is None:
        return "onednn", onednn.kernels(call)[1]
    if call.batch == 1:
        return "xla", "a single image"
    if call.cin > 1 and refusal("winograd", call) is None:
        return "winograd", ""
    return "shifted", ""


def choose(requested: str, call: Call) -> tuple[str, str]:
    """(the route that computes `call` under the config's `requested` one, a note on why or how)."""
    if requested == "auto":
        route, why = _auto(call)
        _log_once(call, route, why)
        return route, why
    if why := refusal(requested, call):
        raise UserError(
            f"conv={requested!r} cannot compute a convolution of {call}: {why}. Set the config's conv to "
            f"'auto' (which takes XLA's route where the others cannot) or to 'xla'."
        )
    return requested, onednn.kernels(call)[1] if requested == "onednn" else ""


@functools.cache
def _log_once(call: Call, route: str, why: str) -> None:
    _log.info("conv=auto: %s -> %s%s", call, route, f" ({why})" if why else "")


def _pad(x_BxHxWxC: jax.Array, call: Call) -> jax.Array:
    return jnp.pad(x_BxHxWxC, ((0, 0), *call.pads, (0, 0)))


def shifted(x_BxHxWxC: jax.Array, kernel_HWIO: jax.Array, call: Call) -> jax.Array:
    """The kh*kw shifted views stacked on the channel axis, then one matmul (exact)."""
    x = _pad(x_BxHxWxC, call)
    kh, kw, cin, cout = kernel_HWIO.shape
    h, w = call.out_hw
    # Stacked a row of shifts at a time: XLA's CPU fusion leaves a concatenate of more than 8
    # operands as a separate, single-threaded copy.
    rows = [jnp.stack([x[:, i : i + h, j : j + w] for j in range(kw)], 3) for i in range(kh)]
    columns = jnp.stack(rows, 3).reshape(x.shape[0], h, w, kh * kw * cin)
    return columns @ kernel_HWIO.reshape(kh * kw * cin, cout)


# The context `plan` traces under: a list that every Conv call appends (module id, route, note) to.
_recording: contextvars.ContextVar[list | None] = contextvars.ContextVar("digitjax_conv_plan", default=None)


class Conv(nnx.Conv):
    """nnx.Conv (the same parameters, so the same checkpoints) computed by `route`, one of ROUTES."""

    def __init__(self, *args, route: str = "auto", **kwargs):
        if route not in ROUTES:
            raise UserError(f"Unknown convolution route {route!r}; the config's conv must be one of {ROUTES}.")
        super().__init__(*args, **kwargs)
        self.route = route

    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        call = describe(self, x_BxHxWxC)
        route, note = choose(self.route, call)
        if (recording := _recording.get()) is not None:
            recording.append((id(self), route, note))
        if route == "xla":
            return super().__call__(x_BxHxWxC)
        kernel, bias = self.kernel[...], self.bias[...] if self.bias is not None else None
        if route == "onednn":
            return onednn.conv(x_BxHxWxC, kernel, bias, call.even_pad)
        if route == "winograd":
            y = winograd.conv3x3(_pad(x_BxHxWxC, call), kernel)
        else:
            y = shifted(x_BxHxWxC, kernel, call)
        return y + bias if bias is not None else y


@dataclasses.dataclass(frozen=True)
class Choice:
    layer: str  # the Conv's path in the model, e.g. "conv2" or "convs/1"
    route: str
    note: str  # why `auto` chose it, or oneDNN's kernels


def plan(model: nnx.Module, x_shape: tuple[int, ...]) -> list[Choice]:
    """The route each Conv of `model` takes on an input of `x_shape`, in call order, found by
    tracing the model in eval mode abstractly (nothing runs)."""
    graphdef, state = nnx.split(model)
    choices: list[Choice] = []

    def trace(state):
        m = nnx.merge(graphdef, state)
        m.eval()
        names = {id(module): "/".join(map(str, path)) for path, module in nnx.iter_modules(m)}
        calls: list = []
        token = _recording.set(calls)
        try:
            m(jnp.zeros(x_shape, jnp.float32))
        finally:
            _recording.reset(token)
        choices.extend(Choice(names[i], route, note) for i, route, note in calls)

    jax.eval_shape(trace, state)
    return choices


def summary(choices: list[Choice]) -> str:
    """'conv1 onednn [forward=jit:avx2 ...], conv2 winograd', one entry per layer."""
    return ", ".join(f"{c.layer} {c.route}" + (f" [{c.note}]" if c.route == "onednn" else "") for c in choices)
