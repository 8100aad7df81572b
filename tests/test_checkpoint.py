import os

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from digitjax import model as model_lib
from digitjax.errors import UserError
from digitjax.runs import checkpoint
from digitjax.state import TrainState
from experiments import smoke


def _run(config, seed=None):
    m = model_lib.create(config.model, config.seed if seed is None else seed)
    opt = nnx.Optimizer(m, optax.adam(1e-3), wrt=nnx.Param)
    return TrainState(m, opt, nnx.MultiMetric(loss=nnx.metrics.Average("loss")))


def _params(m):
    return jax.tree.leaves(nnx.state(m))


def test_save_restore_roundtrip_and_best(tmp_path):
    config = smoke.get_config()
    state = _run(config)
    m = state.model
    rng = jax.random.key(7)
    ckpts = checkpoint.RunCheckpoints(tmp_path, config)
    ckpts.save(10, state, rng, {"val_accuracy": 0.9})
    ckpts.save(20, _run(config, seed=3), rng, {"val_accuracy": 0.5})
    ckpts.save(30, _run(config, seed=3), rng, {})
    ckpts.close()
    assert checkpoint.steps(tmp_path) == ([10, 20, 30], 10)

    fresh = _run(config, seed=5)
    assert not all(np.array_equal(a, b) for a, b in zip(_params(m), _params(fresh.model)))
    ckpts = checkpoint.RunCheckpoints(tmp_path, config)
    key, meta = ckpts.restore(10, fresh, jax.random.key(0))
    ckpts.close()
    assert meta["step"] == 10 and meta["val_accuracy"] == 0.9
    assert np.array_equal(jax.random.key_data(key), jax.random.key_data(rng))
    assert all(np.array_equal(a, b) for a, b in zip(_params(m), _params(fresh.model)))

    # Without a step, inference takes the best by validation accuracy, on the CPU.
    restored = checkpoint.load_for_inference(tmp_path, device=jax.devices("cpu")[0])
    assert restored.step == 10 and restored.config.model == config.model
    assert all(np.array_equal(a, b) for a, b in zip(_params(m), _params(restored.model)))
    assert checkpoint.load_for_inference(tmp_path, step=30).step == 30


def test_workdir_of_another_model_is_refused_untouched(tmp_path):
    config = smoke.get_config()
    ckpts = checkpoint.RunCheckpoints(tmp_path, config)
    ckpts.save(5, _run(config), jax.random.key(0), {})
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
    ckpts = checkpoint.RunCheckpoints(tmp_path, config)
    ckpts.save(5, _run(config), jax.random.key(0), {})
    ckpts.close()
    with pytest.raises(UserError, match="no checkpoint at step 6"):
        checkpoint.load_for_inference(tmp_path, step=6)


def test_a_second_run_in_the_same_workdir_is_refused(tmp_path):
    config = smoke.get_config()
    first = checkpoint.RunCheckpoints(tmp_path, config)
    with pytest.raises(
        UserError, match=f"in use by process {os.getpid()} on {os.uname().nodename}, which is training there"
    ):
        checkpoint.RunCheckpoints(tmp_path, config)
    first.close()
    checkpoint.RunCheckpoints(tmp_path, config).close()  # free again once the first run has ended


def _truncate_largest_file(step_dir):
    victim = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:100])
    return victim


def test_damaged_steps_follow_one_policy_in_training_and_inference(tmp_path):
    config = smoke.get_config()
    ckpts = checkpoint.RunCheckpoints(tmp_path, config)
    for step in (10, 20):
        ckpts.save(step, _run(config, seed=step), jax.random.key(0), {})
    ckpts.close()
    root = tmp_path / "checkpoints"
    victim = _truncate_largest_file(root / "20")

    size = victim.stat().st_size
    why = f"{victim.relative_to(root / '20')} has 100 bytes instead of "
    restored = checkpoint.load_for_inference(tmp_path)
    assert restored.step == 10 and len(restored.notes) == 1
    note = restored.notes[0]
    assert note.startswith(f"{tmp_path}: not using damaged checkpoints (step 20: {why}") and "(truncated?)" in note
    assert note.endswith("using step 10, the newest intact one, instead of the latest.")
    with pytest.raises(UserError, match="Checkpoint step 20 .* is damaged: .*Intact steps: \\[10\\]"):
        checkpoint.load_for_inference(tmp_path, step=20)

    ckpts = checkpoint.RunCheckpoints(tmp_path, config)  # training moves it aside and resumes from 10
    assert ckpts.latest_step() == 10 and len(ckpts.notes) == 1
    assert ckpts.notes[0].startswith(f"Checkpoint step 20 is damaged: {why}")
    assert ckpts.notes[0].endswith(f"Moved it to {tmp_path / 'damaged' / '20'}; resuming from step 10.")
    ckpts.close()
    assert (tmp_path / "damaged" / "20").is_dir() and victim.parent.exists() is False
    assert (tmp_path / "damaged" / "20" / victim.relative_to(root / "20")).stat().st_size == size == 100

    _truncate_largest_file(root / "10")
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in root.rglob("*"))
    with pytest.raises(UserError, match="Every checkpoint in .* is damaged .*Train the run again"):
        checkpoint.load_for_inference(tmp_path)
    with pytest.raises(UserError, match="Every checkpoint in .* is damaged .*Nothing was changed there"):
        checkpoint.RunCheckpoints(tmp_path, config)
    assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in root.rglob("*")) == before


def test_a_folder_that_is_not_a_run_is_refused_untouched(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "metrics.jsonl").write_text('{"someone": "else"}\n')
    before = sorted((p.name, p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    with pytest.raises(UserError, match="holds files that are not a digitjax run \\(metrics.jsonl, notes.txt\\)"):
        checkpoint.RunCheckpoints(tmp_path, smoke.get_config())
    assert sorted((p.name, p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before
    # A run's own folder, even before its first checkpoint, is claimed as it is.
    run = tmp_path / "run"
    checkpoint.RunCheckpoints(run, smoke.get_config()).close()
    (run / "metrics.jsonl").write_text("")
    checkpoint.RunCheckpoints(run, smoke.get_config()).close()
