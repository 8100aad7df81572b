"""Workdirs on a gs:// bucket, against a real GCS emulator (fake-gcs-server) started by the tests."""

import json
import os
import random
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from etils import epath
from google.cloud import storage

from digitjax.errors import UserError
from digitjax.runs import checkpoint, integrity, metrics, objectstore, profiling
from experiments import smoke
from tests.test_checkpoint import _params, _run
from tests.test_faults import FAULTS, TOTAL_STEPS, _assert_bit_identical, _kill_at_random_step


@pytest.fixture
def workdir(gcs, request) -> epath.Path:
    """A fresh gs:// workdir for each test."""
    return epath.Path(f"{gcs.bucket}/{request.node.name}-{time.time_ns()}")


def _blob(workdir: epath.Path, name: str) -> storage.Blob:
    bucket, prefix = str(workdir).removeprefix("gs://").split("/", 1)
    return storage.Client().bucket(bucket).blob(f"{prefix}/{name}")


def _prefix(workdir: epath.Path) -> str:
    return str(workdir).removeprefix("gs://").split("/", 1)[1]


def test_checkpoints_on_a_bucket_commit_with_manifests_and_restore(workdir, gcs):
    config = smoke.get_config()
    state = _run(config)
    ckpts = checkpoint.RunCheckpoints(workdir, config)
    ckpts.save(5, state, jax.random.key(7), {"val_accuracy": 0.9})
    ckpts.save(10, _run(config, seed=3), jax.random.key(7), {"val_accuracy": 0.5})
    ckpts.close()

    objects = gcs.blobs(_prefix(workdir))
    for step in (5, 10):
        # Committed the object-store way (no rename), each with the manifest written before the commit.
        assert f"checkpoints/{step}/commit_success.txt" in objects
        manifest = json.loads(_blob(workdir, f"checkpoints/{step}/{integrity.MANIFEST}").download_as_text())
        assert {f"checkpoints/{step}/{name}" for name in manifest["files"]} <= objects.keys()
        assert any(name.startswith("model/") for name in manifest["files"])
        assert integrity.damage(workdir / "checkpoints" / str(step)) is None
    assert ".digitjax-run" in objects and ".lock" not in objects  # the lease is given back at close
    assert checkpoint.steps(workdir) == ([5, 10], 5)

    restored = checkpoint.load_for_inference(str(workdir))  # the best by validation
    assert restored.step == 5 and restored.notes == []
    assert all(np.array_equal(a, b) for a, b in zip(_params(state.model), _params(restored.model)))


def test_a_damaged_step_on_a_bucket_is_passed_over_and_moved_aside(workdir, gcs):
    config = smoke.get_config()
    config.validation_size = 0
    ckpts = checkpoint.RunCheckpoints(workdir, config)
    for step in (5, 10):
        ckpts.save(step, _run(config, seed=step), jax.random.key(0), {})
    ckpts.close()
    model_files = {n: s for n, s in gcs.blobs(_prefix(workdir)).items() if n.startswith("checkpoints/10/model/")}
    victim = max(model_files, key=model_files.get)
    _blob(workdir, victim).upload_from_string(b"\0" * (model_files[victim] // 2))

    restored = checkpoint.load_for_inference(workdir)
    victim_name = victim.removeprefix("checkpoints/10/")
    assert restored.step == 5 and f"step 10: {victim_name} has" in restored.notes[0]

    ckpts = checkpoint.RunCheckpoints(workdir, config)
    assert ckpts.latest_step() == 5
    assert f"Checkpoint step 10 is damaged: {victim_name}" in ckpts.notes[0]
    ckpts.close()
    objects = gcs.blobs(_prefix(workdir))
    assert not any(n.startswith("checkpoints/10/") for n in objects)
    assert f"damaged/10/{victim_name}" in objects  # kept for a person to look at


def test_an_uncommitted_step_on_a_bucket_is_dropped_at_resume(workdir, gcs):
    config = smoke.get_config()
    ckpts = checkpoint.RunCheckpoints(workdir, config)
    ckpts.save(5, _run(config), jax.random.key(0), {})
    ckpts.close()
    # What a kill in the middle of writing step 10 leaves: its files, no commit_success.txt.
    for name in gcs.blobs(_prefix(workdir)):
        if name.startswith("checkpoints/5/") and not name.endswith("commit_success.txt"):
            copy = _blob(workdir, name.replace("/5/", "/10/", 1))
            copy.upload_from_string(_blob(workdir, name).download_as_bytes())
    assert integrity.committed_steps(workdir / "checkpoints") == [5]

    ckpts = checkpoint.RunCheckpoints(workdir, config)
    assert ckpts.latest_step() == 5
    ckpts.close()
    assert not any(n.startswith("checkpoints/10/") for n in gcs.blobs(_prefix(workdir)))


def _lease(workdir: epath.Path, host: str, pid: int, age: float) -> None:
    holder = {"host": host, "pid": pid, "renewed": time.time() - age}
    _blob(workdir, ".lock").upload_from_string(json.dumps(holder))


def test_the_lease_keeps_a_bucket_workdir_to_one_run(workdir):
    config = smoke.get_config()
    first = checkpoint.RunCheckpoints(workdir, config)
    holder = json.loads(_blob(workdir, ".lock").download_as_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(UserError, match=f"in use by process {os.getpid()} on {socket.gethostname()}"):
        checkpoint.RunCheckpoints(workdir, config)
    first.close()
    checkpoint.RunCheckpoints(workdir, config).close()  # given back: the next run takes it


def test_a_lease_of_a_process_that_died_is_taken_over_at_once(workdir):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _lease(workdir, socket.gethostname(), int(dead.stdout), age=1)
    ckpts = checkpoint.RunCheckpoints(workdir, smoke.get_config())
    assert f"process {int(dead.stdout)} of this host, which held it, has ended" in ckpts.notes[0]
    assert json.loads(_blob(workdir, ".lock").download_as_text())["pid"] == os.getpid()
    ckpts.close()


def test_a_lease_of_another_host_holds_until_it_expires(workdir):
    _lease(workdir, "tpu-vm-7", 1234, age=10)
    with pytest.raises(UserError, match="in use by process 1234 on tpu-vm-7, which renewed its lease 10 s ago"):
        checkpoint.RunCheckpoints(workdir, smoke.get_config())
    assert json.loads(_blob(workdir, ".lock").download_as_text())["host"] == "tpu-vm-7"  # untouched

    _lease(workdir, "tpu-vm-7", 1234, age=objectstore.LEASE_S + 5)
    ckpts = checkpoint.RunCheckpoints(workdir, smoke.get_config())
    assert "it was last renewed 125 s ago" in ckpts.notes[0]
    ckpts.close()


def test_a_run_that_lost_its_lease_saves_nothing_more(workdir, monkeypatch):
    monkeypatch.setattr(objectstore, "LEASE_S", 0.4)  # renewed every 0.1 s
    config = smoke.get_config()
    ckpts = checkpoint.RunCheckpoints(workdir, config)
    state = _run(config)
    ckpts.save(5, state, jax.random.key(0), {})
    ckpts.mngr.wait_until_finished()
    _lease(workdir, "tpu-vm-7", 1234, age=0)  # another run took it over (this one was paused too long)
    time.sleep(0.5)
    with pytest.raises(UserError, match="another run took over the lease"):
        ckpts.save(10, state, jax.random.key(0), {})
    ckpts.close()
    assert checkpoint.steps(workdir)[0] == [5]
    assert json.loads(_blob(workdir, ".lock").download_as_text())["host"] == "tpu-vm-7"  # not deleted by the loser


def test_metrics_and_tensorboard_events_on_a_bucket(workdir, gcs):
    writer = metrics.MetricWriter(workdir)
    for step in (5, 10):
        writer.write(step, "train", {"loss": 1.0 / step})
    writer.close()
    assert [r["step"] for r in metrics.read(workdir)] == [5, 10]
    resumed = metrics.MetricWriter(workdir, resume_step=5)  # the attempt that died had reached 10
    resumed.write(8, "train", {"loss": 0.2})
    resumed.close()
    assert [r["step"] for r in metrics.read(workdir)] == [5, 8]
    events = [n for n, size in gcs.blobs(_prefix(workdir)).items() if "tfevents" in n and size > 0]
    assert len(events) == 2 and all(n.startswith("tensorboard/") for n in events)


def test_a_profile_of_a_run_on_a_bucket_is_uploaded_when_the_trace_stops(workdir, gcs):
    trace = profiling.StepTrace((0, 1), metrics.tensorboard_dir(workdir))
    trace.before_dispatch(0)
    done = jax.jit(lambda x: x @ x)(np.ones((64, 64), np.float32))
    trace.after_dispatch(1, done)
    uploaded = [n for n in gcs.blobs(_prefix(workdir)) if n.startswith("tensorboard/plugins/profile/")]
    assert any(n.endswith(".xplane.pb") for n in uploaded), uploaded
    assert not trace.local.exists()  # the local copy is removed once uploaded


def test_a_missing_bucket_a_whole_bucket_or_another_scheme_is_a_clear_error(gcs):
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.RunCheckpoints("gs://no-such-bucket/run", smoke.get_config())
    with pytest.raises(UserError, match="is a whole bucket; give the run a folder in it"):
        checkpoint.RunCheckpoints(gcs.bucket, smoke.get_config())
    with pytest.raises(UserError, match="on gs:// buckets only"):
        checkpoint.load_for_inference("s3://bucket/run")


def test_states_are_restored_on_a_bucket_in_place(workdir):
    config = smoke.get_config()
    state = _run(config)
    ckpts = checkpoint.RunCheckpoints(workdir, config)
    ckpts.save(5, state, jax.random.key(3), {})
    ckpts.close()
    fresh = _run(config, seed=9)
    ckpts = checkpoint.RunCheckpoints(workdir, config)
    key, meta = ckpts.restore(5, fresh, jax.random.key(0))
    ckpts.close()
    assert meta["step"] == 5 and np.array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(3)))
    assert all(np.array_equal(a, b) for a, b in zip(_params(state.model), _params(fresh.model)))
    assert all(np.array_equal(a, b) for a, b in zip(_params(state.optimizer), _params(fresh.optimizer)))


@pytest.mark.slow
def test_a_run_on_a_bucket_killed_three_times_ends_bit_identical(
    gcs, start_training, saved_arrays, uninterrupted, run_cli
):
    """Trained on gs:// as a TPU user would, killed three times at random steps, then run again:
    the arrays of an uninterrupted local run; then a damaged step on the bucket is passed over."""
    seed = int(time.time())
    rng, log = random.Random(seed), [f"random seed {seed}"]
    workdir = epath.Path(f"{gcs.bucket}/killed-{time.time_ns()}")
    for kill in range(3):
        proc = start_training(workdir, *FAULTS, **gcs.env)
        log.append(_kill_at_random_step(proc, workdir, rng, before=(kill + 1) * TOTAL_STEPS // 4))
    proc = start_training(workdir, *FAULTS, **gcs.env)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert f"step {TOTAL_STEPS}, test accuracy" in out and "Resuming" in err, log
    print("\n".join(log))
    _assert_bit_identical(saved_arrays(workdir, TOTAL_STEPS), saved_arrays(uninterrupted, TOTAL_STEPS))

    # The run's metrics and TensorBoard events are on the bucket, each step once.
    train_steps = [r["step"] for r in metrics.read(workdir) if r["split"] == "train"]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == TOTAL_STEPS
    objects = gcs.blobs(_prefix(workdir))
    assert any(n.startswith("tensorboard/events.out.tfevents.") and size > 0 for n, size in objects.items())

    # A damaged step on the bucket is passed over, with the message, by evaluation and inference.
    *_, previous, newest = sorted(checkpoint.steps(workdir)[0])
    model_files = {n: s for n, s in objects.items() if n.startswith(f"checkpoints/{newest}/model/")}
    victim = max(model_files, key=model_files.get)
    _blob(workdir, victim).upload_from_string(b"\0" * (model_files[victim] // 2))
    proc = run_cli("digitjax.evaluate", "--workdir", str(workdir), "--json", **gcs.env)
    assert json.loads(proc.stdout)["step"] == previous
    assert f"not using damaged checkpoints (step {newest}: {victim.split('/', 2)[2]} has" in proc.stderr
    restored = checkpoint.load_for_inference(workdir)
    assert restored.step == previous and f"step {newest}:" in restored.notes[0]
