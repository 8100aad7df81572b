"""2-D convolutions by oneDNN on the CPU, as XLA FFI custom calls.

oneDNN is the library behind PyTorch's and TensorFlow's CPU convolutions. This jaxlib links it,
but XLA does not route convolutions to it (experiments/RESULTS.md), and XLA's own are ~1/6 of
the matmul peak on MNIST's small images. oneDNN's blocked-layout kernels (Winograd F(4x4, 3x3)
for conv2) train the seed model ~1.4x faster than digitjax's matmul and Winograd convolutions.

`onednn_conv.cc` is compiled with g++ against Debian's oneDNN (`apt-get install g++
libdnnl-dev`; or $DNNLROOT for another install) into ~/.cache/digitjax by an explicit step:
`prepare()`, which the trainer, the evaluator and the web app call before they trace anything, or
`python -m digitjax.ops.onednn build`. Without a compiler or oneDNN, or with DIGITJAX_ONEDNN=0,
`why_not()` says why, and `conv.Conv`'s `auto` route uses digitjax's own convolutions: the
parameters and checkpoints are the same.

oneDNN's fast kernels want channels in blocks: 16 on AVX-512, 8 on AVX2 (`block()`, which asks
oneDNN, so ONEDNN_MAX_CPU_ISA is honoured). The custom calls take and return arrays of shape
(N, C/K, H, W, K). The transposes to and from NHWC here sit next to the bias, ReLU and pooling,
into whose fusions XLA folds them.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from digitjax.ops.call import Call

SOURCE = Path(__file__).with_name("onednn_conv.cc")
_HANDLERS = ("Forward", "BackwardData", "BackwardWeights")
ENV_SWITCH = "DIGITJAX_ONEDNN"  # "0" turns oneDNN's convolutions off


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


def _toolchain() -> tuple[str, str]:
    """The compiler and oneDNN's install root ("" for the system's)."""
    return os.environ.get("CXX", "g++"), os.environ.get("DNNLROOT", "")


def library_path() -> Path:
    """Where the build of this source lives: keyed by the source, jaxlib, the compiler and oneDNN's
    root, not by paths, so that every checkout and environment shares one build."""
    compiler, dnnl_root = _toolchain()
    key = hashlib.sha256(SOURCE.read_bytes())
    for part in (jaxlib.__version__, compiler, dnnl_root):
        key.update(b"\0" + part.encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "digitjax"
    return cache / f"onednn_conv-{key.hexdigest()[:16]}.so"


def build() -> Path:
    """Compiles onednn_conv.cc into the cache unless it is there already, saying so on stderr."""
    compiler, dnnl_root = _toolchain()
    library = library_path()
    if library.exists():
        return library
    if shutil.which(compiler) is None:
        raise RuntimeError("no C++ compiler (apt-get install g++)")
    library.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"Building digitjax's oneDNN convolutions for the CPU (once per machine, a few seconds): {compiler} "
        f"{SOURCE.name} -> {library}",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:  # built aside, then renamed: processes may race
        built = Path(tmp) / library.name
        command = _compile_command(compiler, dnnl_root, built)
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if proc.returncode:
            lines = proc.stderr.strip().splitlines()
            reason = next((line for line in lines if "error" in line), lines[-1] if lines else "no output")
            raise RuntimeError(f"compiling {SOURCE.name} failed ({reason.strip()}; apt-get install libdnnl-dev)")
        os.replace(built, library)
    return library


class _State:
    """The loaded library, or why there is none; set once per process by `_load`."""

    library: ctypes.CDLL | None = None
    off_reason: str | None = None
    tried = False  # to load a build
    compile_tried = False  # to build one


def _load(compile_if_missing: bool) -> None:
    """Loads (and with compile_if_missing, first builds) the library and registers its handlers;
    each at most once per process."""
    if _State.library is not None or _State.compile_tried or (_State.tried and not compile_if_missing):
        return
    _State.tried, _State.compile_tried = True, compile_if_missing
    if os.environ.get(ENV_SWITCH, "1") == "0":
        _State.off_reason = f"{ENV_SWITCH}=0"
        return
    path = library_path()
    try:
        if compile_if_missing:
            path = build()
        elif not path.exists():
            _State.off_reason = "not built yet (python -m digitjax.ops.onednn build)"
            return
        try:
            library = ctypes.CDLL(str(path))
        except OSError:  # a build against a oneDNN since replaced: build again
            if not compile_if_missing:
                raise
            path.unlink()
            library = ctypes.CDLL(str(build()))
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        _State.off_reason = str(e)
        return
    library.DigitjaxConvBlock.restype = ctypes.c_int64
    library.DigitjaxConvKernels.restype = ctypes.c_int
    library.DigitjaxConvKernels.argtypes = [ctypes.c_int64] * 8 + [ctypes.c_char_p, ctypes.c_int64]
    if not library.DigitjaxConvBlock():
        _State.off_reason = "oneDNN has no blocked convolution kernels for this CPU"
        return
    for name in _HANDLERS:
        jax.ffi.register_ffi_target(_target(name), jax.ffi.pycapsule(getattr(library, f"DigitjaxConv{name}")), "cpu")
    _State.library, _State.off_reason = library, None


def prepare() -> str | None:
    """The explicit step before tracing: builds the library if needed (the compiler runs here,
    never inside a trace) and loads it. Returns None when oneDNN's convolutions can be used, else
    why not, said once as a warning where that is a failure rather than a choice."""
    if jax.default_backend() == "cpu" and not _State.compile_tried:
        _load(compile_if_missing=True)
        if _State.library is None and not _State.off_reason.startswith(ENV_SWITCH):
            warnings.warn(f"oneDNN convolutions off: {_State.off_reason}", stacklevel=2)
    return why_not()


def why_not() -> str | None:
    """None where convolutions can go to oneDNN (the CPU backend, the library built and loaded,
    one device: a custom call is opaque to XLA's partitioner, which would gather a sharded batch
    for it); else the reason. Loads an existing build, never compiles one."""
    if jax.default_backend() != "cpu":
        return f"not a CPU backend ({jax.default_backend()})"
    _load(compile_if_missing=False)
    if _State.library is None:
        return _State.off_reason
    if jax.device_count() != 1:
        return f"{jax.device_count()} devices (oneDNN's custom calls run on one)"
    return None


def available() -> bool:
    return why_not() is None


def _target(handler: str) -> str:
    return f"digitjax_conv_{handler}"


def block() -> int:
    """The channel block of oneDNN's fast kernels on this CPU: 16 with AVX-512, 8 with AVX2."""
    if not available():
        raise RuntimeError(f"oneDNN's convolutions are off: {why_not()}")
    return _State.library.DigitjaxConvBlock()


def kernels(call: Call) -> tuple[bool, str]:
    """(whether oneDNN has fast kernels for this stride-1 convolution, the names of those it
    picks: `forward=... weights=... data=...`, empty where it has none)."""
    return _kernels(call) if available() and call.even_pad is not None else (False, "")


@functools.cache  # oneDNN is asked once per shape
def _kernels(call: Call) -> tuple[bool, str]:
    out = ctypes.create_string_buffer(512)
    c = call
    fast = _State.library.DigitjaxConvKernels(
        c.batch, c.cin, c.height, c.width, c.cout, c.kh, c.kw, c.even_pad, out, 512
    )
    return bool(fast), out.value.decode()


def supports(call: Call) -> bool:
    """Whether oneDNN has a fast (not reference) convolution of this shape (stride 1, symmetric padding)."""
    return kernels(call)[0]


def call_of(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], pad: int) -> Call:
    """The Call of an NHWC input by an HWIO kernel, padded by `pad` on every side."""
    b, h, w, cin = x_shape
    kh, kw, _, cout = kernel_shape
    return Call(b, h, w, cin, cout, kh, kw, ((pad, pad), (pad, pad)), None)


def to_blocked(x_BxHxWxC: jax.Array, block: int) -> jax.Array:
    """NHWC -> (B, C/K, H, W, K) for block K, channels zero-padded to whole blocks; one channel ->
    (B, 1, H, W, 1)."""
    b, h, w, c = x_BxHxWxC.shape
    if c == 1:
        return x_BxHxWxC.reshape(b, 1, h, w, 1)
    padded = jnp.pad(x_BxHxWxC, ((0, 0),) * 3 + ((0, -c % block),))
    return padded.reshape(b, h, w, -1, block).transpose(0, 3, 1, 2, 4)


def from_blocked(y_BxNxHxWxK: jax.Array, channels: int) -> jax.Array:
    b, n, h, w, block = y_BxNxHxWxK.shape
    return y_BxNxHxWxK.transpose(0, 2, 3, 1, 4).reshape(b, h, w, n * block)[..., :channels]


def _ffi(handler: str, results):
    # vmap (per-example gradients, say) runs the handlers once per example: they take one batch.
    return jax.ffi.ffi_call(_target(handler), results, vmap_method="sequential")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv_blocked(x, kernel_HWIO, bias_O, pad: int, block: int):
    b, _, h, w, _ = x.shape
    kh, kw, _, cout = kernel_HWIO.shape
    shape = (b, -(-cout // block), h + 2 * pad - kh + 1, w + 2 * pad - kw + 1, block)
    y = _ffi("Forward", jax.ShapeDtypeStruct(shape, x.dtype))(x, kernel_HWIO, pad=np.int64(pad))
    return y + jnp.pad(bias_O, (0, -bias_O.size % block)).reshape(1, -1, 1, 1, block)


def _conv_blocked_fwd(x, kernel_HWIO, bias_O, pad, block):
    return _conv_blocked(x, kernel_HWIO, bias_O, pad, block), (x, kernel_HWIO)


def _conv_blocked_bwd(pad, block, residuals, dy):
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
        dx = _ffi("BackwardData", jax.ShapeDtypeStruct(x.shape, x.dtype))(x, kernel, dy, pad=np.int64(pad))
    # oneDNN sums the bias gradient in the same pass over dy as the weight gradient.
    shapes = (jax.ShapeDtypeStruct(kernel.shape, x.dtype), jax.ShapeDtypeStruct(kernel.shape[-1:], x.dtype))
    dkernel, dbias = _ffi("BackwardWeights", shapes)(x, kernel, dy, pad=np.int64(pad))
    return dx, dkernel, dbias


_conv_blocked.defvjp(_conv_blocked_fwd, _conv_blocked_bwd)


def conv(x_BxHxWxC: jax.Array, kernel_HWIO: jax.Array, bias_O: jax.Array | None, pad: int) -> jax.Array:
    """A stride-1 float32 convolution padded by `pad` on every side, plus the bias; NHWC in and
    out, differentiable. Only where `supports` says so."""
    cout = kernel_HWIO.shape[-1]
    if not supports(call_of(x_BxHxWxC.shape, kernel_HWIO.shape, pad)):
        raise ValueError(f"oneDNN has no fast convolution of {x_BxHxWxC.shape} by {kernel_HWIO.shape} padded by {pad}")
    bias_O = jnp.zeros(cout, x_BxHxWxC.dtype) if bias_O is None else bias_O
    k = block()
    return from_blocked(_conv_blocked(to_blocked(x_BxHxWxC, k), kernel_HWIO, bias_O, pad, k), cout)


def main(argv: list[str]) -> None:
    """`python -m digitjax.ops.onednn build`: compile now (as training would on first use); `info`:
    whether the convolutions are on here, the channel block, and the kernels for the seed model's."""
    if argv[1:] not in (["build"], ["info"]):
        sys.exit("usage: python -m digitjax.ops.onednn build|info")
    reason = prepare()
    if reason is not None:
        sys.exit(f"oneDNN's convolutions are off: {reason}")
    print(f"oneDNN's convolutions are on: {library_path()}, channel blocks of {block()}")
    if argv[1] == "info":
        for name, shape in (("seed conv1", (128, 28, 28, 1, 32)), ("seed conv2", (128, 26, 26, 32, 64))):
            print(f"{name} {shape}: {kernels(call_of(shape[:4], (3, 3, shape[3], shape[4]), 0))[1]}")


if __name__ == "__main__":
    main(sys.argv)
