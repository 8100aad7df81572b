"""What a researcher changes first, each in one config field: the dataset, the model's sizes, the loss."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from digitjax import data, evaluate, trainer
from digitjax import loss as loss_lib
from digitjax import model as model_lib
from digitjax.runs import checkpoint
from experiments import fast, fast995, smoke
from tests.conftest import ROOT, SMOKE

SIZES = ("--config.model_kwargs.hidden=48", "--config.model_kwargs.widths=(8, 16)")


def _train_cli(workdir, synthetic_tfds, *args):
    command = [sys.executable, "-m", "digitjax.train", *SMOKE, "--workdir", str(workdir), *args]
    command += ["--data_dir", str(synthetic_tfds), "--idx_dir", "/nonexistent", "--config.num_epochs=1"]
    proc = subprocess.run(command, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# One run in the fast tier; the other is a second start of the same program, so in the full suite only.
@pytest.mark.parametrize("name, sizes", [("fashion_mnist", SIZES), pytest.param("kmnist", (), marks=pytest.mark.slow)])
def test_the_dataset_and_the_sizes_are_config_fields_the_run_records(
    name, sizes, synthetic_others, synthetic_tfds, tmp_path
):
    """`--config.dataset=NAME` trains on that TFDS dataset; evaluation reads the dataset from the
    run; `--config.model_kwargs...` sizes the model, and the checkpoint records the whole spec."""
    workdir = tmp_path / name
    proc = _train_cli(workdir, synthetic_others, f"--config.dataset={name}", "--config.train_size=0", *sizes)
    assert "test accuracy" in proc.stdout
    restored = checkpoint.load_for_inference(workdir)
    assert restored.meta["dataset"] == name and restored.config.dataset == name
    spec = restored.meta["model_spec"]
    assert spec["family"] == "fast" and spec["kwargs"]["hidden"] == (48 if sizes else 128)
    assert restored.model.dense1.kernel.shape[1] == spec["kwargs"]["hidden"]
    assert restored.model.conv1.kernel.shape[-1] == (8 if sizes else 32)
    summary = evaluate.report(workdir, None, data.Paths(str(synthetic_others), "/nonexistent"), plots=False)
    assert summary["dataset"] == name and summary["class_names"] == list(data.DATASETS[name].class_names)
    assert summary["test_accuracy"] > 0.9, summary["test_accuracy"]
    # The same model on MNIST's synthetic images, labelled otherwise: it learned this dataset's labels.
    mnist = data.load("mnist", "test", data.Paths(str(synthetic_tfds), "/nonexistent"))
    batches = evaluate.batches(mnist.images_NxHxW, mnist.labels_N, 100)
    assert evaluate.evaluate_arrays(restored.model, batches, len(mnist.labels_N))["accuracy"] < 0.3


def test_named_recipes_are_their_families_at_set_sizes():
    """The zoo's old names still resolve, to the same model the recipes now spell out."""
    assert model_lib.spec_of(fast.get_config()) == model_lib.spec("s2d24")
    assert model_lib.spec_of(fast995.get_config()) == model_lib.spec("s2d24_wider256")
    a, b = model_lib.create("s2d24", 0, conv="xla"), model_lib.create(model_lib.spec_of(fast.get_config()), 0, "xla")
    assert jax.tree.all(jax.tree.map(np.array_equal, nnx.state(a, nnx.Param), nnx.state(b, nnx.Param)))


def test_sizes_a_family_does_not_take_are_a_clear_error():
    with pytest.raises(Exception, match=r"model_kwargs \['crop'\] are not sizes of model 'fast'.*hidden"):
        model_lib.spec("fast", {"crop": 2})


def test_a_run_configured_before_the_fields_restores_by_its_models_old_name(synthetic_tfds, tmp_path):
    """A config without `dataset` and `model_kwargs`, naming a model the old way, as older runs' are."""
    config = smoke.get_config()
    del config["dataset"], config["model_kwargs"]
    config.model, config.num_epochs, config.train_size, config.validation_size = "small", 1, 256, 0
    trainer.train_and_evaluate(config, tmp_path / "old", data.Paths(str(synthetic_tfds), "/nonexistent"))
    restored = checkpoint.load_for_inference(tmp_path / "old")
    assert "dataset" not in restored.config and "model_kwargs" not in restored.config
    assert data.dataset_of(restored.config) == "mnist"
    assert restored.model.conv1.kernel.shape[-1] == 8  # small: fast at widths (8, 24)


def test_evaluation_reports_the_training_loss_definition(monkeypatch):
    """evaluate's loss is loss.per_example's mean, so changing the loss changes what is reported."""
    model = model_lib.create("small", 0, conv="xla")
    model.eval()
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (13, 28, 28), np.uint8), rng.integers(0, 10, 13).astype(np.int32)
    logits = model(model_lib.to_input(jnp.asarray(images)))
    expected = float(loss_lib.per_example(logits, labels).mean())
    got = evaluate.evaluate_arrays(model, evaluate.batches(images, labels, 13), 13)["loss"]
    assert got == pytest.approx(expected, rel=1e-5)
    monkeypatch.setattr(loss_lib, "per_example", lambda logits, labels, smoothing=0.0: jnp.ones(len(labels)) * 7)
    changed = evaluate.evaluate_arrays(model, evaluate.batches(images[:11], labels[:11], 11), 11)["loss"]
    assert changed == pytest.approx(7.0)
