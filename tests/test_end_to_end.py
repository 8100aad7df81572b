"""The commands as a user runs them: train, kill, resume, evaluate, and every user mistake."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from digitjax.runs import checkpoint
from digitjax.runs import metrics as metrics_lib

# Trains on the real MNIST, in subprocesses as a user would: the full suite only.
pytestmark = pytest.mark.slow


ROOT = Path(__file__).resolve().parent.parent
SMOKE = ("--config", "experiments/smoke.py")


def _wait_for_checkpoint(proc, workdir, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = [p for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
        if steps:
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, start_training):
    """A smoke run killed with SIGKILL after its first checkpoint, then resumed to the end."""
    workdir = tmp_path_factory.mktemp("run")
    proc = start_training(workdir)
    _wait_for_checkpoint(proc, workdir)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(checkpoint.steps(workdir)[0])
    resumed = start_training(workdir)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    return workdir, killed_at, out, err


def test_sigkill_then_same_command_resumes_and_finishes(trained):
    workdir, killed_at, out, err = trained
    assert killed_at < 64
    assert f"Resuming {workdir} from step {killed_at}." in err
    assert "step 64, test accuracy" in out
    records = metrics_lib.read(workdir)
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == sorted(set(train_steps)), "each step is recorded once, also across the restart"
    assert [r["step"] for r in records if r["split"] == "test"] == [32, 64]
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_run_says_what_it_runs_on_and_checkpoints_its_convolution_routes(trained):
    workdir, _, _, err = trained
    import jax

    from digitjax import model
    from digitjax.ops import conv, onednn

    # What conv=auto chooses here, computed apart from the trainer: the line and the metadata agree.
    onednn.prepare()
    expected = {
        split: {c.layer: c.route for c in conv.plan(model.create("fast", seed=0), (batch, 28, 28, 1))}
        for split, batch in (("train", 32), ("eval", 1000))
    }
    line = next(line for line in err.splitlines() if line.startswith("Running on "))
    assert line.startswith(f"Running on {jax.default_backend()}: 1 x {jax.devices()[0].device_kind}, 1 process(es)")
    assert "conv=auto: training " + ", ".join(f"{k} {v}" for k, v in expected["train"].items()) in re.sub(
        r" \[[^]]*\]", "", line
    )
    meta = checkpoint.load_for_inference(workdir).meta
    assert meta["conv"] == "auto" and meta["conv_routes"] == expected
    assert expected["eval"] == {"conv1": "xla", "conv2": "xla"}  # evaluation's batches are XLA's on a CPU


def test_explicit_route_that_cannot_run_is_a_clear_error(run_cli, tmp_path):
    # Refused before a step runs or a checkpoint is written, with what to do instead.
    proc = run_cli(
        "digitjax.train", *SMOKE, "--workdir", str(tmp_path), "--config.conv=onednn", check=False, DIGITJAX_ONEDNN="0"
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    said = " ".join(proc.stderr.split())
    assert "conv='onednn' cannot compute a convolution" in said
    assert "oneDNN's convolutions are off: DIGITJAX_ONEDNN=0. Set the config's conv to 'auto'" in said
    assert not list(tmp_path.glob("checkpoints/*"))


def test_evaluate_json_matches_what_training_reported(trained, run_cli):
    workdir = trained[0]
    reported = {r["step"]: r["accuracy"] for r in metrics_lib.read(workdir) if r["split"] == "test"}
    all_steps, best = checkpoint.steps(workdir)
    for args, step in ((), best), (("--step", "64"), 64):
        proc = run_cli("digitjax.evaluate", "--workdir", str(workdir), "--json", *args)
        result = json.loads(proc.stdout)  # stdout holds the JSON object alone
        assert result["step"] == step and result["model"] == "fast"
        assert result["test_accuracy"] == reported[step]
        assert result["labels_changed_since_training"] == 0
        assert sum(map(sum, result["confusion_matrix"])) == 10000


RESTORE_AND_PREDICT = """
import sys, jax, numpy as np
from flax import nnx
from digitjax import data, model
from digitjax.runs import checkpoint
restored = checkpoint.load_for_inference(sys.argv[1], device=jax.devices("cpu")[0])
test = data.load("mnist", "test")
predict = nnx.jit(lambda m, x: m(model.to_input(x)).argmax(-1))
labels = np.concatenate([predict(restored.model, test.images_NxHxW[i : i + 500]) for i in range(0, 10000, 500)])
print(restored.step, "".join(map(str, labels)))
"""


def test_fast_checkpoint_predicts_in_a_fresh_process_what_it_did_in_training(trained, run_cli):
    workdir = trained[0]
    proc = subprocess.run(
        [sys.executable, "-c", RESTORE_AND_PREDICT, str(workdir)],
        env=run_cli.environ(),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    step, labels = proc.stdout.split()
    recorded = checkpoint.load_for_inference(workdir, step=int(step)).meta["test_predictions"]
    assert len(labels) == 10000 and labels == recorded


def test_evaluate_writes_the_report(trained, run_cli):
    workdir = trained[0]
    proc = run_cli("digitjax.evaluate", "--workdir", str(workdir))
    assert "test accuracy" in proc.stdout and "\n  9: " in proc.stdout  # per class, by its name
    for name in ("report.json", "confusion.png", "mistakes.png", "curves.png"):
        assert (workdir / "report" / name).stat().st_size > 1000 or name == "report.json"
    assert json.loads((workdir / "report" / "report.json").read_text())["test_errors"] > 0


def _assert_clean_error(proc, *phrases):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ") or "\nerror: " in proc.stderr, proc.stderr
    for phrase in phrases:
        assert phrase in proc.stderr.replace("\n", " "), proc.stderr


def test_no_data_is_a_clear_error(run_cli, tmp_path):
    empty = tmp_path / "empty"
    (empty / "mnist").mkdir(parents=True)
    proc = run_cli(
        "digitjax.train",
        *SMOKE,
        "--workdir",
        str(tmp_path / "w"),
        check=False,
        TFDS_DATA_DIR=str(tmp_path / "tfds"),
        DIGITJAX_IDX_DIR=str(empty),
    )
    _assert_clean_error(proc, "train-images-idx3-ubyte.gz is missing", "--idx_dir")
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_damaged_idx_file_is_a_clear_error(run_cli, tmp_path, mnist_dir):
    folder = tmp_path / "idx" / "mnist"
    shutil.copytree(mnist_dir, folder)
    (folder / "t10k-labels-idx1-ubyte.gz").chmod(0o644)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b" + b"broken")
    proc = run_cli("digitjax.data", "--data_dir", str(tmp_path / "tfds"), "--idx_dir", str(folder.parent), check=False)
    _assert_clean_error(proc, "t10k-labels-idx1-ubyte.gz is damaged")


def test_unknown_config_field_is_a_clear_error(run_cli, tmp_path):
    proc = run_cli("digitjax.train", *SMOKE, "--workdir", str(tmp_path), "--config.nmu_epochs=3", check=False)
    _assert_clean_error(proc, "Unknown config field 'nmu_epochs'", "Did you mean num_epochs")


def test_workdir_of_another_model_is_a_clear_error_and_untouched(trained, run_cli):
    workdir = trained[0]
    before = sorted((str(p), p.stat().st_mtime_ns) for p in workdir.rglob("*"))
    proc = run_cli("digitjax.train", *SMOKE, "--workdir", str(workdir), "--config.model=s2d", check=False)
    _assert_clean_error(proc, "holds a checkpoint of another run", "model='fast' there, 's2d' here")
    assert sorted((str(p), p.stat().st_mtime_ns) for p in workdir.rglob("*")) == before


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, run_cli):
    run_cli("digitjax.train", *SMOKE, "--workdir", str(tmp_path), "--config.num_epochs=1")
    good = checkpoint.steps(tmp_path)[0]
    proc = run_cli(
        "digitjax.train",
        *SMOKE,
        "--workdir",
        str(tmp_path),
        "--config.num_epochs=2",
        "--config.learning_rate=1e12",
        check=False,
    )
    _assert_clean_error(proc, "last good checkpoint")
    assert checkpoint.steps(tmp_path)[0] == good
    restored = checkpoint.load_for_inference(tmp_path, step=max(good))
    import jax
    from flax import nnx

    assert all(bool(jax.numpy.isfinite(x).all()) for x in jax.tree.leaves(nnx.state(restored.model)))


AVERAGED = (
    "--config.ema_decay=0.9",
    "--config.augment_rotate_deg=10",
    "--config.augment_shift_px=2",
    "--config.test_time_shifts=True",
)


def test_augmented_averaged_run_resumes_and_serves_its_average(tmp_path, start_training, run_cli):
    """With augmentation, a weight average and test-time shifts: killed, resumed, and the restored
    model (the average) evaluates to exactly what training reported."""
    workdir = tmp_path / "averaged"
    proc = start_training(workdir, *AVERAGED)
    _wait_for_checkpoint(proc, workdir)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = start_training(workdir, *AVERAGED)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert "Resuming" in err and re.search(r"training [\d.]+ s, compiling [\d.]+ s", out)
    tests = [r for r in metrics_lib.read(workdir) if r["split"] == "test"]
    assert 0 < tests[0]["train_seconds"] < tests[1]["train_seconds"]
    result = json.loads(run_cli("digitjax.evaluate", "--workdir", str(workdir), "--json", "--step", "64").stdout)
    assert result["test_accuracy"] == tests[1]["accuracy"]
    assert result["labels_changed_since_training"] == 0
    served = checkpoint.load_for_inference(workdir, step=64).model
    mngr = checkpoint.open_read_only(workdir)
    restore = ocp.args.StandardRestore
    items = mngr.restore(64, args=ocp.args.Composite(model=restore(), ema=restore()))
    mngr.close()
    kernel = np.asarray(served.dense2.kernel[...])
    np.testing.assert_array_equal(kernel, items["ema"]["dense2"]["kernel"])
    assert not np.allclose(kernel, items["model"]["dense2"]["kernel"])
