"""Faults a run must survive: kills at any moment, preemption, damaged checkpoints, a full disk."""

import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from etils import epath

from digitjax import data, trainer
from digitjax.errors import UserError
from digitjax.runs import checkpoint, integrity, objectstore, orbax_internals
from experiments import smoke

# Trains on the real MNIST, in subprocesses as a user would: the full suite only.
pytestmark = pytest.mark.slow


ROOT = Path(__file__).resolve().parent.parent
# Every source of randomness (init, data order, dropout, augmentation) and a weight average,
# with a checkpoint every 4 of the 64 steps so that kills often land in a save.
FAULTS = (
    "--config.checkpoint_every_steps=4",
    "--config.ema_decay=0.9",
    "--config.augment_rotate_deg=10",
    "--config.augment_shift_px=2",
)
TOTAL_STEPS = 64


def _assert_bit_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name


def _progress(workdir: Path | str) -> int:
    """The newest step in the run's training log (written every 5 steps), on a disk or a bucket."""
    try:
        lines = objectstore.read_text(epath.Path(workdir) / "metrics.jsonl").splitlines()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line being written
            continue
        if record.get("split") == "train":
            steps.append(record["step"])
    return max(steps)


def _wait_until(proc: subprocess.Popen, done, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not done():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.communicate()[1][-3000:]}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def _random_step(workdir: Path, rng: random.Random, before: int) -> int:
    """A step past the run's progress, before `before` where there is room."""
    start = _progress(workdir)
    return rng.randrange(start + 1, max(start + 2, before))


def _kill_at_random_step(proc, workdir: Path, rng: random.Random, before: int = TOTAL_STEPS - 12) -> str:
    target = _random_step(workdir, rng, before)
    _wait_until(proc, lambda: _progress(workdir) >= target, f"step {target}")
    time.sleep(rng.uniform(0, 0.3))  # anywhere: in a dispatch, an evaluation or a save
    proc.kill()
    proc.wait()
    return f"SIGKILL after step {target}"


def _kill_during_save(proc, workdir: Path) -> str | None:
    root = workdir / "checkpoints"

    def writing():
        return bool(orbax_internals.pending_dirs(root))

    _wait_until(proc, writing, "a checkpoint write")
    proc.kill()
    proc.wait()
    # Proof that the kill landed mid-write: the uncommitted step is still there.
    partial = [p.name for p in orbax_internals.pending_dirs(root)]
    return f"SIGKILL while writing {partial[0]}" if partial else None


def test_three_sigkills_and_a_sigterm_resume_bit_identical(tmp_path, start_training, saved_arrays, uninterrupted):
    """Killed three times at random moments, one of them inside a checkpoint write, and stopped
    once by SIGTERM, the run ends with exactly the arrays of an uninterrupted one."""
    seed = int(time.time())
    rng = random.Random(seed)
    workdir = tmp_path / "interrupted"
    log = [f"random seed {seed}"]
    # The faults take turns in thirds of the run: each stops a few steps past its target.
    proc = start_training(workdir, *FAULTS)
    log.append(_kill_at_random_step(proc, workdir, rng, before=TOTAL_STEPS // 3))

    for _attempt in range(4):  # a kill can miss the write by a millisecond; then it was one more kill
        proc = start_training(workdir, *FAULTS)
        landed = _kill_during_save(proc, workdir)
        log.append(landed or "SIGKILL just after a write (retrying)")
        if landed:
            break
    assert landed, log

    proc = start_training(workdir, *FAULTS)
    target = _random_step(workdir, rng, before=2 * TOTAL_STEPS // 3)
    _wait_until(proc, lambda: _progress(workdir) >= target, f"step {target}")
    proc.send_signal(signal.SIGTERM)
    sent = time.perf_counter()
    out, err = proc.communicate(timeout=120)
    seconds = time.perf_counter() - sent
    assert proc.returncode == 0, err[-3000:]
    stopped_at = int(re.search(r"Stopped by signal 15 at step (\d+)", err).group(1))
    assert stopped_at == max(checkpoint.steps(workdir)[0])
    log.append(f"SIGTERM after step {target}: saved step {stopped_at}, exited 0 after {seconds:.1f} s")
    assert seconds < 15, log

    proc = start_training(workdir, *FAULTS)
    log.append(_kill_at_random_step(proc, workdir, rng))

    proc = start_training(workdir, *FAULTS)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert f"step {TOTAL_STEPS}, test accuracy" in out and "Resuming" in err
    print("\n".join(log))
    _assert_bit_identical(saved_arrays(workdir, TOTAL_STEPS), saved_arrays(uninterrupted, TOTAL_STEPS))


def _config(**changes):
    config = smoke.get_config()
    config.validation_size = 0  # no best step: inference takes the newest
    config.update(changes)
    return config


def test_same_config_and_seed_give_bit_identical_parameters(tmp_path, tfds_dir, mnist_dir, saved_arrays):
    arrays = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        config = _config(seed=seed, num_epochs=1, ema_decay=0.9, augment_rotate_deg=10.0, augment_elastic_px=1.0)
        trainer.train_and_evaluate(config, tmp_path / name, data.Paths(str(tfds_dir), str(mnist_dir.parent)))
        arrays[name] = saved_arrays(tmp_path / name, 32)
    _assert_bit_identical(arrays["a"], arrays["b"])
    assert not np.array_equal(arrays["a"]["model['dense2']['kernel']"], arrays["c"]["model['dense2']['kernel']"])


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tfds_dir, mnist_dir) -> Path:
    workdir = tmp_path_factory.mktemp("finished") / "run"
    trainer.train_and_evaluate(_config(), workdir, data.Paths(str(tfds_dir), str(mnist_dir.parent)))
    return workdir


def _damage(step_dir: Path, how: str) -> str:
    """Truncates or deletes the largest file of the step's model; returns its relative path."""
    victim = max((p for p in (step_dir / "model").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    if how == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    else:
        victim.unlink()
    return str(victim.relative_to(step_dir))


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_damaged_newest_step_is_passed_over_and_said(finished, tmp_path, tfds_dir, mnist_dir, capsys, how):
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    *_, previous, newest = sorted(checkpoint.steps(workdir)[0])
    assert checkpoint.load_for_inference(workdir).step == newest
    damaged_file = _damage(workdir / "checkpoints" / str(newest), how)

    restored = checkpoint.load_for_inference(workdir)
    assert restored.step == previous
    assert len(restored.notes) == 1 and f"step {newest}: {damaged_file}" in restored.notes[0]
    with pytest.raises(UserError, match=f"step {newest} in .* is damaged: {re.escape(damaged_file)}"):
        checkpoint.load_for_inference(workdir, step=newest)

    # Training resumes from the intact step, keeping the damaged one aside for a person to see.
    trainer.train_and_evaluate(_config(num_epochs=3), workdir, data.Paths(str(tfds_dir), str(mnist_dir.parent)))
    err = capsys.readouterr().err
    assert f"Checkpoint step {newest} is damaged: {damaged_file}" in err
    assert f"Resuming {workdir} from step {previous}." in err
    assert integrity.damage(workdir / "damaged" / str(newest)) is not None
    assert max(checkpoint.steps(workdir)[0]) == 96
    assert integrity.damage(workdir / "checkpoints" / "96") is None


def test_every_step_damaged_is_a_clear_error_and_nothing_changes(finished, tmp_path, tfds_dir, mnist_dir):
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    for step in checkpoint.steps(workdir)[0]:
        _damage(workdir / "checkpoints" / str(step), "delete")
    before = sorted((str(p), p.stat().st_mtime_ns) for p in workdir.rglob("*"))
    with pytest.raises(UserError, match="Every checkpoint in .* is damaged"):
        checkpoint.load_for_inference(workdir)
    with pytest.raises(UserError, match="Every checkpoint in .* is damaged .* Nothing was changed"):
        trainer.train_and_evaluate(_config(), workdir, data.Paths(str(tfds_dir), str(mnist_dir.parent)))
    assert sorted((str(p), p.stat().st_mtime_ns) for p in workdir.rglob("*")) == before


# In a user and mount namespace of its own, a 12 MB disk: room for two checkpoints of the smoke
# run (4.8 MB each), not for a third. Then the disk grows, as if space had been freed.
NO_SPACE = """
set -u
mount -t tmpfs -o size=12m tmpfs "$DISK"
"$PY" -m digitjax.train --config experiments/smoke.py --workdir "$DISK/run" >"$OUT/full.out" 2>"$OUT/full.err"
echo $? >"$OUT/full.rc"
cp -a "$DISK/run" "$OUT/after_full"
mount -o remount,size=64m "$DISK"
"$PY" -m digitjax.train --config experiments/smoke.py --workdir "$DISK/run" >"$OUT/freed.out" 2>"$OUT/freed.err"
echo $? >"$OUT/freed.rc"
"""


def test_no_space_left_is_a_clear_error_and_keeps_older_checkpoints(tmp_path, run_cli):
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs tmpfs {tmp_path}"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"this machine cannot mount a small disk in a namespace: {probe.stderr.strip()}")
    (tmp_path / "disk").mkdir()
    (tmp_path / "out").mkdir()
    env = run_cli.environ(DISK=str(tmp_path / "disk"), OUT=str(tmp_path / "out"), PY=sys.executable)
    subprocess.run(["unshare", "-rm", "sh", "-c", NO_SPACE], cwd=ROOT, env=env, check=True, timeout=600)
    out = tmp_path / "out"

    err = (out / "full.err").read_text()
    assert (out / "full.rc").read_text().strip() == "2" and "Traceback" not in err, err[-3000:]
    message = " ".join(err[err.index("error: ") :].split())
    assert "No space left on the device while saving step 30" in message, message
    assert "the checkpoints saved before (steps 10, 20) are intact" in message
    kept = out / "after_full"
    assert checkpoint.steps(kept)[0] == [10, 20]
    assert orbax_internals.pending_dirs(kept / "checkpoints") == [], "the partial step is removed"
    assert all(integrity.damage(kept / "checkpoints" / s) is None for s in ("10", "20"))
    assert checkpoint.load_for_inference(kept, step=20).step == 20

    assert (out / "freed.rc").read_text().strip() == "0", (out / "freed.err").read_text()[-3000:]
    assert "Resuming" in (out / "freed.err").read_text() and "step 64, test accuracy" in (out / "freed.out").read_text()
