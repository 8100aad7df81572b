"""Every convolution route against nnx.Conv, outputs and gradients, and the refusals.

Run with -s for the table: one line per route and case, with the route `auto` took.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from digitjax.errors import UserError
from digitjax.ops import conv, onednn

# Relative to the largest reference value. Every route sums the same products in float32, in
# another order, and Winograd's transforms add a few roundings more (oneDNN's F(4x4, 3x3) most):
# measured up to ~2e-6 on outputs and gradients, AVX-512 and AVX2 alike (pytest -s prints them),
# so 1e-5 and 2e-5 leave room without letting a wrong term through (a wrong tap is off by ~1e-1).
OUTPUT_TOL, GRAD_TOL = 1e-5, 2e-5

# (padding, batch, size, cin, cout, kernel side)
CASES = {
    "seed conv2": ("VALID", 4, 12, 16, 32, 3),
    "same, 8 -> 24": ("SAME", 4, 12, 8, 24, 3),
    "odd output": ("VALID", 4, 13, 8, 16, 3),
    "one input channel": ("SAME", 4, 12, 1, 16, 3),
    "2x2 kernel, uneven 'SAME'": ("SAME", 3, 10, 4, 8, 2),
    "5x5 kernel": ("VALID", 2, 9, 3, 5, 5),
    "one image": ("SAME", 1, 12, 16, 16, 3),
    "past MAX_BATCH": ("VALID", conv.MAX_BATCH + 1, 8, 8, 8, 3),
}

# Arguments that only XLA computes: auto takes XLA's route, every other route refuses.
UNSUPPORTED = {
    "strides 2": dict(strides=2),
    "kernel dilation": dict(kernel_dilation=2),
    "feature groups": dict(feature_group_count=2),
    "integer padding": dict(padding=1),
    "circular padding": dict(padding="CIRCULAR"),
    "a mask": dict(mask=jnp.ones((3, 3, 4, 8)).at[0, 0].set(0)),
    "bfloat16": dict(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16),
}


def _pair(route: str, cin: int, cout: int, k: int, **kwargs):
    ours = conv.Conv(cin, cout, (k, k), route=route, rngs=nnx.Rngs(0), **kwargs)
    reference = nnx.Conv(cin, cout, (k, k), rngs=nnx.Rngs(0), **kwargs)
    # A nonzero bias, so that its gradient and its broadcast are checked too.
    ours.bias[...] = reference.bias[...] = jax.random.normal(jax.random.key(5), (cout,), ours.bias.dtype)
    return ours, reference


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _grads(module, x, dy):
    """Gradients of <module(x), dy> for the input, the kernel and the bias."""
    graphdef, params = nnx.split(module)

    def f(params, x):
        return jnp.vdot(nnx.merge(graphdef, params)(x), dy)

    dparams, dx = jax.jit(jax.grad(f, (0, 1)))(params, x)
    return dx, dparams["kernel"][...], dparams["bias"][...]


@functools.cache
def _reference(case: str):
    """nnx.Conv's output, the output gradient used, and its gradients for a case: once for every route."""
    padding, batch, size, cin, cout, k = CASES[case]
    _, reference = _pair("xla", cin, cout, k, padding=padding)
    x = jax.random.normal(jax.random.key(1), (batch, size, size, cin))
    y = reference(x)
    dy = jax.random.normal(jax.random.key(2), y.shape)
    return y, dy, _grads(reference, x, dy)


@pytest.fixture(scope="module", autouse=True)
def _onednn_prepared():
    onednn.prepare()  # as the trainer does; where it cannot be built the onednn route refuses


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("route", conv.ROUTES)
def test_route_matches_nnx_conv_or_refuses(route, case):
    padding, batch, size, cin, cout, k = CASES[case]
    ours, reference = _pair(route, cin, cout, k, padding=padding)
    x = jax.random.normal(jax.random.key(1), (batch, size, size, cin))
    call = conv.describe(ours, x)
    why = None if route == "auto" else conv.refusal(route, call)
    if why:
        with pytest.raises(UserError, match="cannot compute a convolution"):
            ours(x)
        print(f"\n{route:>9} | {case:<26} | refused: {why}")
        return
    y = ours(x)
    y_reference, dy, grads_reference = _reference(case)
    errors = [_rel_err(y, y_reference)]
    errors += [_rel_err(a, b) for a, b in zip(_grads(ours, x, dy), grads_reference)]
    taken = conv.choose(route, call)[0]
    print(
        f"\n{route:>9} | {case:<26} | {taken:<8} | output {errors[0]:.1e}, grads "
        + ", ".join(f"{e:.1e}" for e in errors[1:])
    )
    assert errors[0] < OUTPUT_TOL
    for name, error in zip(("input", "kernel", "bias"), errors[1:]):
        assert error < GRAD_TOL, name
    assert jax.tree.structure(nnx.state(ours)) == jax.tree.structure(nnx.state(reference))  # same checkpoints


@pytest.mark.parametrize("case", UNSUPPORTED)
@pytest.mark.parametrize("route", conv.ROUTES)
def test_what_only_xla_computes_goes_to_xla_under_auto_and_is_refused_elsewhere(route, case):
    kwargs = UNSUPPORTED[case]
    ours, reference = _pair(route, 4, 8, 3, **kwargs)
    x = jax.random.normal(jax.random.key(1), (4, 12, 12, 4), kwargs.get("dtype", jnp.float32))
    if route in ("auto", "xla"):
        assert conv.choose(route, conv.describe(ours, x))[0] == "xla"
        np.testing.assert_array_equal(ours(x), reference(x))  # the very same computation
        print(f"\n{route:>9} | {case:<26} | xla")
    else:
        with pytest.raises(UserError, match=f"conv='{route}' cannot compute a convolution"):
            ours(x)
        print(f"\n{route:>9} | {case:<26} | refused: {conv.refusal(route, conv.describe(ours, x))}")


def test_auto_is_xla_off_the_cpu(monkeypatch):
    call = conv.describe(conv.Conv(16, 32, (3, 3), rngs=nnx.Rngs(0)), jnp.zeros((128, 12, 12, 16)))
    assert conv.choose("auto", call)[0] != "xla"
    for backend in ("gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
        assert conv.choose("auto", call) == ("xla", f"XLA's own on {backend} (no faster route measured there)")


def test_unknown_route_is_a_user_error():
    with pytest.raises(UserError, match="conv must be one of"):
        conv.Conv(1, 8, (3, 3), route="cudnn", rngs=nnx.Rngs(0))


def test_plan_names_each_layer_and_its_route():
    from digitjax import model as model_lib

    choices = conv.plan(model_lib.create("deep", seed=0, conv="shifted"), (8, 28, 28, 1))
    assert [(c.layer, c.route) for c in choices] == [(f"convs/{i}", "shifted") for i in range(4)]
    assert [c.route for c in conv.plan(model_lib.create("seed", seed=0), (1000, 28, 28, 1))] == ["xla", "xla"]
