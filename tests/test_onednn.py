"""oneDNN's convolutions: what oneDNN offers on this CPU, the same results and gradients as XLA's
where it has fast kernels, and digitjax's own where it is off.

Nothing here assumes a CPU family: each test asks oneDNN which kernels it picked on the machine
it runs on, and `ONEDNN_MAX_CPU_ISA=AVX2` shows the AVX2 family on an AVX-512 machine too.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digitjax import trainer
from digitjax.ops import conv, onednn
from digitjax.tools import bench
from digitjax.train import EXPERIMENTS

# Where Debian's libdnnl-dev is installed (CI installs it) and oneDNN is not switched off, the build
# must work: a broken build would otherwise pass unnoticed, with digitjax's slower convolutions.
INSTALLED = Path("/usr/include/oneapi/dnnl/dnnl.hpp").exists() or "DNNLROOT" in os.environ
SWITCHED_OFF = os.environ.get(onednn.ENV_SWITCH) == "0"
needs_onednn = pytest.mark.skipif(
    not INSTALLED or SWITCHED_OFF,
    reason="oneDNN is switched off (DIGITJAX_ONEDNN=0)" if SWITCHED_OFF else "oneDNN is not installed (libdnnl-dev)",
)
SEED_CONV2 = ((128, 26, 26, 32), (3, 3, 32, 64), 0)  # the seed model's conv2: input, kernel, padding


def _check(code: str, **env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module", autouse=True)
def _prepared():
    onednn.prepare()


@needs_onednn
def test_available_where_libdnnl_is_installed():
    assert onednn.why_not() is None


@needs_onednn
@pytest.mark.parametrize("cap", [None, "AVX2"])
def test_channel_block_follows_the_isa_oneDNN_runs_with(cap):
    # oneDNN's jit kernels are named for their ISA (jit:avx2, jit_wino_4x3:avx512_core): their
    # blocks are 16 channels on AVX-512 and 8 below it. Capped to AVX2, every machine shows AVX2's.
    call = f"onednn.call_of{SEED_CONV2}"
    code = f"from digitjax.ops import onednn; onednn.prepare()\nprint(onednn.block()); print(onednn.kernels({call})[1])"
    proc = _check(code, ONEDNN_MAX_CPU_ISA=cap)
    assert proc.returncode == 0, proc.stderr[-2000:]
    block, kernels = proc.stdout.strip().splitlines()
    isas = {name.split(":")[1] for name in kernels.split()}
    assert len(isas) == 1, kernels
    [isa] = isas
    assert isa.startswith("avx512") or isa == "avx2", kernels
    assert int(block) == (16 if isa.startswith("avx512") else 8)
    if cap:
        assert isas == {"avx2"}


@pytest.mark.slow  # compiles with g++ in subprocesses
@needs_onednn
def test_build_is_an_explicit_step_and_is_redone_when_stale(tmp_path):
    # Loading never compiles: without a build, oneDNN is off until `prepare` or the command builds it.
    proc = _check("from digitjax.ops import onednn; print(onednn.why_not())", XDG_CACHE_HOME=str(tmp_path))
    assert proc.stdout.strip() == "not built yet (python -m digitjax.ops.onednn build)", proc.stderr[-2000:]
    assert not list(tmp_path.glob("digitjax/*.so"))
    proc = subprocess.run(
        [sys.executable, "-m", "digitjax.ops.onednn", "build"],
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "Building digitjax's oneDNN convolutions" in proc.stderr, proc.stderr[-2000:]
    [library] = (tmp_path / "digitjax").glob("onednn_conv-*.so")
    # A build that no longer loads (oneDNN replaced since) is built again by the explicit step.
    library.write_bytes(b"not a library")
    proc = _check("from digitjax.ops import onednn; print(onednn.prepare())", XDG_CACHE_HOME=str(tmp_path))
    assert proc.stdout.split() == ["None"], proc.stderr[-2000:]
    assert library.read_bytes()[:4] == b"\x7fELF"


@pytest.mark.slow  # fresh processes, one a failing compiler
@pytest.mark.parametrize(
    "env, warning",
    [
        ({"DIGITJAX_ONEDNN": "0"}, None),
        ({"CXX": "false", "DIGITJAX_ONEDNN": None}, "oneDNN convolutions off: compiling onednn_conv.cc failed"),
    ],
)
def test_without_onednn_auto_uses_digitjax_own(tmp_path, env, warning):
    code = (
        "import jax.numpy as jnp; from flax import nnx; from digitjax.ops import conv, onednn\n"
        "print(onednn.prepare() is not None)\n"
        "c = conv.Conv(32, 64, (3, 3), padding='VALID', rngs=nnx.Rngs(0))\n"
        "x = jnp.ones((4, 12, 12, 32)); print(conv.choose('auto', conv.describe(c, x))[0], c(x).shape)"
    )
    proc = _check(code, XDG_CACHE_HOME=str(tmp_path), **env)
    assert proc.stdout.split() == ["True", "winograd", "(4,", "10,", "10,", "64)"], proc.stderr[-2000:]
    if warning:
        assert warning in proc.stderr and proc.stderr.count("oneDNN convolutions off") == 1
    assert not list(tmp_path.glob("digitjax/*.so"))


def _xla_conv(x, kernel, bias, pad):
    dims = ("NHWC", "HWIO", "NHWC")
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), [(pad, pad)] * 2, dimension_numbers=dims, precision="highest")
    return y + bias


def _rel_err(a, b):
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


@needs_onednn
@pytest.mark.parametrize(
    "batch, size, cin, cout, pad",
    [
        (5, 26, 32, 64, 0),  # the seed model's conv2: Winograd F(4x4, 3x3) on AVX-512
        (3, 14, 32, 64, 1),  # the fast model's conv2, padded
        (4, 28, 1, 32, 0),  # an input layer: one channel
        (3, 28, 1, 8, 1),  # the small model's input layer: output channels padded to a block of 16
        (2, 12, 32, 24, 0),  # a direct convolution
        (4, 14, 8, 24, 1),  # the small model's conv2: reference kernels only on AVX-512
    ],
)
def test_conv_and_its_gradients_match_xla_conv_where_onednn_has_fast_kernels(batch, size, cin, cout, pad):
    fast, kernels = onednn.kernels(onednn.call_of((batch, size, size, cin), (3, 3, cin, cout), pad))
    # What digitjax calls fast is what oneDNN names a jit kernel, on this machine.
    assert kernels and fast == ("ref:" not in kernels), kernels
    x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) / np.sqrt(9 * cin)
    bias = jax.random.normal(jax.random.key(2), (cout,))
    if not fast:
        with pytest.raises(ValueError, match="no fast convolution"):
            onednn.conv(x, kernel, bias, pad)
        return
    dy = jax.random.normal(jax.random.key(3), (batch, size + 2 * pad - 2, size + 2 * pad - 2, cout))

    def grads(conv):
        return jax.jit(jax.grad(lambda *args: jnp.vdot(conv(*args, pad), dy), (0, 1, 2)))(x, kernel, bias)

    # float32 sums in another order (and Winograd's transforms): ~1e-6 relative, measured.
    assert (
        _rel_err(jax.jit(onednn.conv, static_argnums=3)(x, kernel, bias, pad), _xla_conv(x, kernel, bias, pad)) < 1e-5
    )
    for name, ours, reference in zip(("x", "kernel", "bias"), grads(onednn.conv), grads(_xla_conv)):
        assert _rel_err(ours, reference) < 2e-5, name


@needs_onednn
def test_vmap_runs_the_custom_calls_once_per_example():
    x = jax.random.normal(jax.random.key(0), (3, 2, 12, 12, 16))  # 3 examples of a batch of 2
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 16, 16)) / 12
    bias = jnp.zeros(16)
    ours = jax.vmap(lambda x: onednn.conv(x, kernel, bias, 1))(x)
    assert _rel_err(ours, jax.vmap(lambda x: _xla_conv(x, kernel, bias, 1))(x)) < 1e-5


@needs_onednn
def test_seed_training_step_runs_its_convolutions_by_the_planned_routes():
    config = bench.load_config(str(EXPERIMENTS / "seed.py"))
    state, batches, options = bench.synthetic_run(config, n=256)
    hlo = trainer.lower_train_steps(state, batches, jax.random.key(0), options).compile().as_text()
    routes = {c.layer: c.route for c in conv.plan(state.model, (config.batch_size, 28, 28, 1))}
    assert set(routes.values()) <= {"onednn", "winograd", "shifted"}, routes  # on a CPU, never XLA's
    assert routes["conv2"] == "onednn"  # both families have fast kernels for it (this machine's are above)
    # Each oneDNN layer: a forward and a weight gradient, and an input gradient past the first
    # layer (conv1's, which only saliency maps ask for, XLA drops).
    onednn_layers = [layer for layer, route in routes.items() if route == "onednn"]
    calls = {
        t: hlo.count(f'custom_call_target="digitjax_conv_{t}"') for t in ("Forward", "BackwardData", "BackwardWeights")
    }
    n = len(onednn_layers)
    assert calls == {"Forward": n, "BackwardData": n - ("conv1" in onednn_layers), "BackwardWeights": n}
    assert " convolution(" not in hlo
