"""What a researcher changes first, each in one config field: the dataset, the model's sizes, the loss."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from digitjax import data, evaluate, trainer
from digitjax import loss as loss_lib
from digitjax import model as model_lib
from digitjax.runs import checkpoint
from digitjax.state import TrainState
from experiments import fast, fast995, smoke
from tests.conftest import ROOT, SMOKE

SIZES = ("--config.model_kwargs.hidden=48", "--config.model_kwargs.widths=(8, 16)")


def _train_cli(workdir, synthetic_tfds, *args):
    command = [sys.executable, "-m", "digitjax.train", *SMOKE, "--workdir", str(workdir), *args]
    command += ["--data_dir", str(synthetic_tfds), "--idx_dir", "/nonexistent", "--config.num_epochs=1"]
    proc = subprocess.run(command, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _assert_the_run_records_its_choices(workdir, name, hidden, width, synthetic_others, synthetic_tfds):
    """The checkpoint records the dataset and the whole model spec; evaluation reads the dataset
    from the run; and the model learned that dataset's labels, not MNIST's."""
    restored = checkpoint.load_for_inference(workdir)
    assert restored.meta["dataset"] == name and restored.config.dataset == name
    spec = restored.meta["model_spec"]
    assert spec["family"] == "fast" and spec["kwargs"]["hidden"] == hidden and spec["kwargs"]["widths"][0] == width
    assert restored.model.dense1.kernel.shape[1] == hidden and restored.model.conv1.kernel.shape[-1] == width
    summary = evaluate.report(workdir, None, data.Paths(str(synthetic_others), "/nonexistent"), plots=False)
    assert summary["dataset"] == name and summary["class_names"] == list(data.DATASETS[name].class_names)
    assert summary["test_accuracy"] > 0.9, summary["test_accuracy"]
    # The same model on MNIST's synthetic images, labelled otherwise: it learned this dataset's labels.
    mnist = data.load("mnist", "test", data.Paths(str(synthetic_tfds), "/nonexistent"))
    batches = evaluate.batches(mnist.images_NxHxW, mnist.labels_N, 100)
    assert evaluate.evaluate_arrays(restored.model, batches, len(mnist.labels_N))["accuracy"] < 0.3


def test_dataset_and_sizes_are_config_fields_the_run_records(synthetic_others, synthetic_tfds, tmp_path):
    config = smoke.get_config()
    config.dataset, config.train_size, config.num_epochs = "fashion_mnist", 0, 1
    config.model_kwargs.hidden, config.model_kwargs.widths = 48, (8, 16)
    trainer.train_and_evaluate(config, tmp_path / "run", data.Paths(str(synthetic_others), "/nonexistent"))
    _assert_the_run_records_its_choices(tmp_path / "run", "fashion_mnist", 48, 8, synthetic_others, synthetic_tfds)


@pytest.mark.slow  # a program of its own for each dataset
@pytest.mark.parametrize("name", ["fashion_mnist", "kmnist"])
def test_the_command_line_picks_the_dataset_and_the_sizes(name, synthetic_others, synthetic_tfds, tmp_path):
    """`python -m digitjax.train --config experiments/smoke.py --config.dataset=NAME --config.model_kwargs...`"""
    proc = _train_cli(tmp_path / name, synthetic_others, f"--config.dataset={name}", "--config.train_size=0", *SIZES)
    assert "test accuracy" in proc.stdout
    _assert_the_run_records_its_choices(tmp_path / name, name, 48, 8, synthetic_others, synthetic_tfds)


def test_named_recipes_are_their_families_at_set_sizes():
    """The zoo's old names still resolve, to the same model the recipes now spell out."""
    assert model_lib.spec_of(fast.get_config()) == model_lib.spec("s2d24")
    assert model_lib.spec_of(fast995.get_config()) == model_lib.spec("s2d24_wider256")
    a, b = model_lib.create("s2d24", 0, conv="xla"), model_lib.create(model_lib.spec_of(fast.get_config()), 0, "xla")
    assert jax.tree.all(jax.tree.map(np.array_equal, nnx.state(a, nnx.Param), nnx.state(b, nnx.Param)))


def test_sizes_a_family_does_not_take_are_a_clear_error():
    with pytest.raises(Exception, match=r"model_kwargs \['crop'\] are not sizes of model 'fast'.*hidden"):
        model_lib.spec("fast", {"crop": 2})


def test_a_run_configured_before_the_fields_restores_by_its_models_old_name(tmp_path):
    """A config without `dataset` and `model_kwargs`, naming a model the old way, as older runs' are."""
    config = smoke.get_config()
    del config["dataset"], config["model_kwargs"]
    config.model = "small"
    model = model_lib.create("small", 0)
    state = TrainState(model, nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param), nnx.MultiMetric())
    saved = checkpoint.RunCheckpoints(tmp_path / "old", config)
    saved.save(1, state, jax.random.key(0), {})
    saved.close()
    restored = checkpoint.load_for_inference(tmp_path / "old")
    assert "dataset" not in restored.config and "model_kwargs" not in restored.config
    assert data.dataset_of(restored.config) == "mnist"
    assert restored.model.conv1.kernel.shape[-1] == 8  # small: fast at widths (8, 24)
    assert np.array_equal(restored.model.dense2.kernel[...], model.dense2.kernel[...])


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
