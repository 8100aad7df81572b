"""2-D convolutions by oneDNN on the CPU, as XLA FFI custom calls.

oneDNN is the library behind PyTorch's and TensorFlow's CPU convolutions. This jaxlib links it,
but XLA does not route convolutions to it (experiments/RESULTS.md), and XLA's own are ~1/6 of
the matmul peak on MNIST's small images. oneDNN's blocked-layout kernels (Winograd F(4x4, 3x3)
for conv2) train the seed model ~1.4x faster than digitjax's matmul and Winograd convolutions.

`onednn_conv.cc` is compiled once per machine with g++ against Debian's oneDNN
(`apt-get install g++ libdnnl-dev`; or $DNNLROOT for another install) into
~/.cache/digitjax. Without them, or with DIGITJAX_ONEDNN=0, `available()` is False, says why
once, and `model.Conv` keeps its own convolutions: the parameters and checkpoints are the same.

oneDNN's kernels want channels in blocks of 16: the custom calls take and return arrays of
shape (N, C/16, H, W, 16). The transposes to and from NHWC here sit next to the bias, ReLU and
pooling, into whose fusions XLA folds them.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from absl import logging

SOURCE = Path(__file__).with_name("onednn_conv.cc")
BLOCK = 16
_HANDLERS = ("Forward", "BackwardData", "BackwardWeights")


def _compile_command(compiler: str, dnnl_root: str, out: Path) -> list[str]:
    extra = [f"-I{dnnl_root}/include", f"-L{dnnl_root}/lib", f"-Wl,-rpath,{dnnl_root}/lib"] if dnnl_root else []
    return [
        compiler,
        *("-O2", "-shared", "-fPIC", "-std=c++17", "-w", f"-I{jax.ffi.include_dir()}"),
        *extra,
        str(SOURCE),
        "-o",
        str(out),
        "-ldnnl",
    ]


def _build() -> Path:
    """The compiled library, built on first use; keyed by the source, jaxlib, the compiler and
    oneDNN's root, not by paths, so that every checkout and environment shares one build."""
    compiler, dnnl_root = os.environ.get("CXX", "g++"), os.environ.get("DNNLROOT", "")
    key = hashlib.sha256(SOURCE.read_bytes())
    for part in (jaxlib.__version__, compiler, dnnl_root):
        key.update(b"\0" + part.encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "digitjax"
    library = cache / f"onednn_conv-{key.hexdigest()[:16]}.so"
    if library.exists():
        return library
    if shutil.which(compiler) is None:
        raise RuntimeError("no C++ compiler (apt-get install g++)")
    cache.mkdir(parents=True, exist_ok=True)
    logging.info("Compiling digitjax's oneDNN convolutions into %s (once, a few seconds).", library)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:  # built aside, then renamed: processes may race
        built = Path(tmp) / library.name
        command = _compile_command(compiler, dnnl_root, built)
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if proc.returncode:
            lines = proc.stderr.strip().splitlines()
            reason = next((line for line in lines if "error" in line), lines[-1] if lines else "no output")
            raise RuntimeError(f"compiling {SOURCE.name} failed ({reason.strip()}; apt-get install libdnnl-dev)")
        os.replace(built, library)
    return library


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("DIGITJAX_ONEDNN", "1") == "0":
        return None
    try:
        try:
            library = ctypes.CDLL(str(_build()))
        except OSError:  # a build against a oneDNN since replaced: build again
            _build().unlink()
            library = ctypes.CDLL(str(_build()))
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        # A warning, not a log line: the trainer keeps only absl's errors.
        warnings.warn(f"oneDNN convolutions off, digitjax's own used instead: {e}", stacklevel=2)
        return None
    for name in _HANDLERS:
        jax.ffi.register_ffi_target(_target(name), jax.ffi.pycapsule(getattr(library, f"DigitjaxConv{name}")), "cpu")
    library.DigitjaxConvSupported.restype = ctypes.c_int
    library.DigitjaxConvSupported.argtypes = [ctypes.c_int64] * 8
    return library


def _target(handler: str) -> str:
    return f"digitjax_conv_{handler}"


def available() -> bool:
    """Whether convolutions can go to oneDNN: the CPU backend, the library built, one device
    (a custom call is opaque to XLA's partitioner, which would gather a sharded batch for it)."""
    return jax.default_backend() == "cpu" and jax.device_count() == 1 and _library() is not None


@functools.cache
def supports(batch: int, height: int, width: int, cin: int, cout: int, kh: int, kw: int, pad: int) -> bool:
    """Whether oneDNN has a convolution of this shape (stride 1, symmetric padding)."""
    return available() and bool(_library().DigitjaxConvSupported(batch, cin, height, width, cout, kh, kw, pad))


def to_blocked(x_BxHxWxC: jax.Array) -> jax.Array:
    """NHWC -> (B, C/16, H, W, 16), channels zero-padded to whole blocks; one channel -> (B, 1, H, W, 1)."""
    b, h, w, c = x_BxHxWxC.shape
    if c == 1:
        return x_BxHxWxC.reshape(b, 1, h, w, 1)
    padded = jnp.pad(x_BxHxWxC, ((0, 0),) * 3 + ((0, -c % BLOCK),))
    return padded.reshape(b, h, w, -1, BLOCK).transpose(0, 3, 1, 2, 4)


def from_blocked(y_BxNxHxWx16: jax.Array, channels: int) -> jax.Array:
    b, n, h, w, block = y_BxNxHxWx16.shape
    return y_BxNxHxWx16.transpose(0, 2, 3, 1, 4).reshape(b, h, w, n * block)[..., :channels]


def _conv_blocked_shape(x, kernel, pad: int) -> jax.ShapeDtypeStruct:
    b, _, h, w, _ = x.shape
    kh, kw, _, cout = kernel.shape
    return jax.ShapeDtypeStruct((b, -(-cout // BLOCK), h + 2 * pad - kh + 1, w + 2 * pad - kw + 1, BLOCK), x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv_blocked(x, kernel_HWIO, bias_O, pad: int):
    y = jax.ffi.ffi_call(_target("Forward"), _conv_blocked_shape(x, kernel_HWIO, pad))(
        x, kernel_HWIO, pad=np.int64(pad)
    )
    return y + jnp.pad(bias_O, (0, -bias_O.size % BLOCK)).reshape(1, -1, 1, 1, BLOCK)


def _conv_blocked_fwd(x, kernel_HWIO, bias_O, pad):
    return _conv_blocked(x, kernel_HWIO, bias_O, pad), (x, kernel_HWIO)


def _conv_blocked_bwd(pad, residuals, dy):
    x, kernel = residuals
    if kernel.shape[2] == 1:
        # oneDNN has no input gradient for one channel. In training nothing asks for it and XLA
        # drops this; serving's saliency maps do ask.
        b, _, h, w, _ = x.shape
        dims = ("NHWC", "HWIO", "NHWC")
        _, vjp = jax.vjp(
            lambda x: jax.lax.conv_general_dilated(x, kernel, (1, 1), [(pad, pad)] * 2, dimension_numbers=dims),
            x.reshape(b, h, w, 1),
        )
        dx = vjp(from_blocked(dy, kernel.shape[-1]))[0].reshape(x.shape)
    else:
        dx = jax.ffi.ffi_call(_target("BackwardData"), jax.ShapeDtypeStruct(x.shape, x.dtype))(
            x, kernel, dy, pad=np.int64(pad)
        )
    # oneDNN sums the bias gradient in the same pass over dy as the weight gradient.
    shapes = (jax.ShapeDtypeStruct(kernel.shape, x.dtype), jax.ShapeDtypeStruct(kernel.shape[-1:], x.dtype))
    dkernel, dbias = jax.ffi.ffi_call(_target("BackwardWeights"), shapes)(x, kernel, dy, pad=np.int64(pad))
    return dx, dkernel, dbias


_conv_blocked.defvjp(_conv_blocked_fwd, _conv_blocked_bwd)


def conv(x_BxHxWxC: jax.Array, kernel_HWIO: jax.Array, bias_O: jax.Array | None, pad: int) -> jax.Array:
    """A stride-1 float32 convolution padded by `pad` on every side, plus the bias; NHWC in and
    out, differentiable. Only where `supports` says so."""
    kh, kw, _, cout = kernel_HWIO.shape
    if not supports(*x_BxHxWxC.shape, cout, kh, kw, pad):
        raise ValueError(f"oneDNN has no convolution of {x_BxHxWxC.shape} by {kernel_HWIO.shape} padded by {pad}")
    bias_O = jnp.zeros(cout, x_BxHxWxC.dtype) if bias_O is None else bias_O
    return from_blocked(_conv_blocked(to_blocked(x_BxHxWxC), kernel_HWIO, bias_O, pad), cout)
