"""oneDNN's convolutions: the same results and gradients as XLA's, and digitjax's own where they are off."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from digitjax import bench, onednn, train
from digitjax import model as model_lib

# Where Debian's libdnnl-dev is installed (CI installs it), the build must work: a broken build
# would otherwise pass unnoticed, with digitjax's slower convolutions in its place.
INSTALLED = Path("/usr/include/oneapi/dnnl/dnnl.hpp").exists() or "DNNLROOT" in os.environ
needs_onednn = pytest.mark.skipif(not INSTALLED, reason="oneDNN is not installed (apt-get install libdnnl-dev)")


def _check(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )


@needs_onednn
def test_available_where_libdnnl_is_installed():
    assert onednn.available()


@needs_onednn
def test_first_use_builds_the_library_into_the_cache(tmp_path):
    proc = _check("from digitjax import onednn; print(onednn.available())", XDG_CACHE_HOME=str(tmp_path))
    assert proc.stdout.split() == ["True"], proc.stderr[-2000:]
    [library] = (tmp_path / "digitjax").glob("onednn_conv-*.so")
    # A build that no longer loads (oneDNN replaced since) is built again.
    library.write_bytes(b"not a library")
    proc = _check("from digitjax import onednn; print(onednn.available())", XDG_CACHE_HOME=str(tmp_path))
    assert proc.stdout.split() == ["True"], proc.stderr[-2000:]
    assert library.read_bytes()[:4] == b"\x7fELF"


@pytest.mark.parametrize(
    "env, reason",
    [({"DIGITJAX_ONEDNN": "0"}, None), ({"CXX": "false"}, "oneDNN convolutions off, digitjax's own used instead")],
)
def test_without_onednn_conv_falls_back_to_digitjax_own(tmp_path, env, reason):
    code = (
        "from flax import nnx; import jax.numpy as jnp; from digitjax import model, onednn\n"
        "conv = model.Conv(32, 64, (3, 3), padding='VALID', rngs=nnx.Rngs(0))\n"
        "print(onednn.available(), conv(jnp.ones((4, 12, 12, 32))).shape)"
    )
    proc = _check(code, XDG_CACHE_HOME=str(tmp_path), **env)
    assert proc.stdout.split() == ["False", "(4,", "10,", "10,", "64)"], proc.stderr[-2000:]
    if reason:
        assert reason in proc.stderr
    assert not list(tmp_path.glob("digitjax/*.so"))


def _xla_conv(x, kernel, bias, pad):
    dims = ("NHWC", "HWIO", "NHWC")
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), [(pad, pad)] * 2, dimension_numbers=dims, precision="highest")
    return y + bias


@needs_onednn
@pytest.mark.parametrize(
    "batch, size, cin, cout, pad",
    [
        (5, 26, 32, 64, 0),  # the seed model's conv2: Winograd F(4x4, 3x3)
        (3, 14, 32, 64, 1),  # the fast model's conv2, padded
        (4, 28, 1, 32, 0),  # an input layer: one channel
        (3, 28, 1, 8, 1),  # the small model's input layer: output channels padded to a block of 16
        (2, 12, 32, 24, 0),  # the same, on a direct convolution
    ],
)
def test_conv_and_its_gradients_match_xla_conv(batch, size, cin, cout, pad):
    assert onednn.supports(batch, size, size, cin, cout, 3, 3, pad)
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (batch, size, size, cin))
    kernel = jax.random.normal(keys[1], (3, 3, cin, cout)) / np.sqrt(9 * cin)
    bias = jax.random.normal(keys[2], (cout,))
    dy = jax.random.normal(keys[3], (batch, size + 2 * pad - 2, size + 2 * pad - 2, cout))

    def rel_err(a, b):
        return float(jnp.abs(a - b).max() / jnp.abs(b).max())

    def grads(conv):
        return jax.jit(jax.grad(lambda *args: jnp.vdot(conv(*args, pad), dy), (0, 1, 2)))(x, kernel, bias)

    assert rel_err(jax.jit(onednn.conv, static_argnums=3)(x, kernel, bias, pad), _xla_conv(x, kernel, bias, pad)) < 1e-5
    for name, ours, reference in zip(("x", "kernel", "bias"), grads(onednn.conv), grads(_xla_conv)):
        assert rel_err(ours, reference) < 2e-5, name


@needs_onednn
def test_reference_kernels_are_refused_and_conv_uses_digitjax_own():
    # oneDNN has only its (~100x slower) reference kernel for 8 -> 24 channels padded by 1.
    assert not onednn.supports(4, 14, 14, 8, 24, 3, 3, 1)
    with pytest.raises(ValueError, match="no convolution"):
        onednn.conv(jnp.ones((4, 14, 14, 8)), jnp.ones((3, 3, 8, 24)), None, 1)
    ours = model_lib.Conv(8, 24, (3, 3), rngs=nnx.Rngs(0))
    xla = nnx.Conv(8, 24, (3, 3), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 14, 14, 8))
    np.testing.assert_allclose(ours(x), xla(x), atol=1e-5)


def test_conv_of_another_dtype_than_float32_uses_digitjax_own():
    ours = model_lib.Conv(16, 32, (3, 3), rngs=nnx.Rngs(0))
    xla = nnx.Conv(16, 32, (3, 3), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 12, 12, 16), jnp.bfloat16)
    hlo = nnx.jit(lambda conv, x: conv(x)).lower(ours, x).as_text()
    assert "digitjax_conv" not in hlo
    np.testing.assert_allclose(ours(x), xla(x), atol=0.02)  # bfloat16's rounding


@needs_onednn
def test_seed_training_step_runs_its_convolutions_in_onednn():
    config = bench.load_config(str(train.EXPERIMENTS / "seed.py"))
    model, optimizer, metrics, images, labels, order = bench.synthetic_run(config, n=256)
    graphdef, state = nnx.split((model, optimizer, metrics))
    args = (graphdef, None, 0.0, None, state, images, labels, order, 0, 1, jax.random.key(0))
    hlo = train._train_steps.lower(*args).compile().as_text()
    # conv1 and conv2 forward and weight gradients, conv2's input gradient; conv1's input gradient,
    # an XLA convolution that only saliency maps ask for, is dropped.
    calls = {
        t: hlo.count(f'custom_call_target="digitjax_conv_{t}"') for t in ("Forward", "BackwardData", "BackwardWeights")
    }
    assert calls == {"Forward": 2, "BackwardData": 1, "BackwardWeights": 2}
    assert " convolution(" not in hlo
