import os

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from digitjax import checkpoint
from digitjax import model as model_lib
from digitjax.errors import UserError
from experiments import smoke


def _run(config):
    m = model_lib.create(config.model, config.seed)
    opt = nnx.Optimizer(m, optax.adam(1e-3), wrt=nnx.Param)
    return m, opt


def _params(m):
    return jax.tree.leaves(nnx.state(m))


def test_save_restore_roundtrip_and_best(tmp_path):
    config = smoke.get_config()
    m, opt = _run(config)
    rng = jax.random.key(7)
    ckpts = checkpoint.RunCheckpoints(tmp_path, config)
    ckpts.save(10, m, opt, rng, {"val_accuracy": 0.9})
    m2, opt2 = _run(config)
    ckpts.save(20, m2, opt2, rng, {"val_accuracy": 0.5})
    ckpts.save(30, m2, opt2, rng, {})
    ckpts.close()
    assert checkpoint.steps(tmp_path) == ([10, 20, 30], 10)

    fresh = model_lib.create(config.model, seed=5)
    fresh_opt = nnx.Optimizer(fresh, optax.adam(1e-3), wrt=nnx.Param)
    assert not all(np.array_equal(a, b) for a, b in zip(_params(m), _params(fresh)))
    ckpts = checkpoint.RunCheckpoints(tmp_path, config)
    key, meta = ckpts.restore(10, fresh, fresh_opt, jax.random.key(0))
    ckpts.close()
    assert meta["step"] == 10 and meta["val_accuracy"] == 0.9
    assert np.array_equal(jax.random.key_data(key), jax.random.key_data(rng))
    assert all(np.array_equal(a, b) for a, b in zip(_params(m), _params(fresh)))

    # Without a step, inference takes the best by validation accuracy, on the CPU.
    restored = checkpoint.load_for_inference(tmp_path, device=jax.devices("cpu")[0])
    assert restored.step == 10 and restored.config.model == config.model
    assert all(np.array_equal(a, b) for a, b in zip(_params(m), _params(restored.model)))
    assert checkpoint.load_for_inference(tmp_path, step=30).step == 30


def test_workdir_of_another_model_is_refused_untouched(tmp_path):
    config = smoke.get_config()
    m, opt = _run(config)
    ckpts = checkpoint.RunCheckpoints(tmp_path, config)
    ckpts.save(5, m, opt, jax.random.key(0), {})
    ckpts.close()
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    other = smoke.get_config()
    other.model = "seed"
    with pytest.raises(UserError, match="another run \\(model='fast' there, 'seed' here\\)"):
        checkpoint.RunCheckpoints(tmp_path, other)
    assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_load_for_inference_errors(tmp_path):
    with pytest.raises(UserError, match="No checkpoints in"):
        checkpoint.load_for_inference(tmp_path)
    config = smoke.get_config()
    m, opt = _run(config)
    ckpts = checkpoint.RunCheckpoints(tmp_path, config)
    ckpts.save(5, m, opt, jax.random.key(0), {})
    ckpts.close()
    with pytest.raises(UserError, match="no checkpoint at step 6"):
        checkpoint.load_for_inference(tmp_path, step=6)


def test_a_second_run_in_the_same_workdir_is_refused(tmp_path):
    config = smoke.get_config()
    first = checkpoint.RunCheckpoints(tmp_path, config)
    with pytest.raises(UserError, match=f"in use by process {os.getpid()}, which is training there"):
        checkpoint.RunCheckpoints(tmp_path, config)
    first.close()
    checkpoint.RunCheckpoints(tmp_path, config).close()  # free again once the first run has ended
