"""Shared fixtures: the real MNIST files, prepared once per session into a temporary TFDS dir."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from digitjax import data

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ("--config", "experiments/smoke.py")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    path = Path(os.environ.get(data.MNIST_DIR_ENV, ROOT.parent / "shared" / "data" / "mnist"))
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"The tests need the four MNIST IDX files: set {data.MNIST_DIR_ENV} to their folder.")
    return path


@pytest.fixture(scope="session")
def tfds_dir(mnist_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tfds")
    data.prepare(str(root), str(mnist_dir))
    return root


@pytest.fixture(scope="session")
def test_split(tfds_dir) -> data.Split:
    return data.load("test", str(tfds_dir))


@pytest.fixture(scope="session")
def run_cli(tfds_dir, mnist_dir):
    """Runs `python -m MODULE ARGS` as a user would, with the test data dirs in the environment."""

    base_env = {"TFDS_DATA_DIR": str(tfds_dir), data.MNIST_DIR_ENV: str(mnist_dir)}

    def run(module: str, *args: str, check: bool = True, **env) -> subprocess.CompletedProcess:
        environ = {**os.environ, **base_env, **env}
        proc = subprocess.run(
            [sys.executable, "-m", module, *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{module} {args} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc

    run.env = base_env
    return run


@pytest.fixture(scope="session")
def served_checkpoints(tfds_dir, mnist_dir, tmp_path_factory) -> Path:
    """A checkpoints/ folder with one small but competent run (~97% test accuracy) to serve."""
    from digitjax import train
    from experiments import smoke

    root = tmp_path_factory.mktemp("checkpoints")
    config = smoke.get_config()
    config.train_size, config.batch_size, config.num_epochs = 12800, 64, 2
    train.train_and_evaluate(config, root / "tiny", str(tfds_dir), str(mnist_dir))
    return root


@pytest.fixture(scope="session")
def start_training(tfds_dir, mnist_dir):
    """Starts `python -m digitjax.train --config experiments/smoke.py` in the background, as a user would."""
    env = {**os.environ, "TFDS_DATA_DIR": str(tfds_dir), data.MNIST_DIR_ENV: str(mnist_dir)}

    def start(workdir: Path, *args: str, **more_env: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "digitjax.train", *SMOKE, "--workdir", str(workdir), *args]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        return subprocess.Popen(command, cwd=ROOT, env={**env, **more_env}, **pipes)

    return start


@pytest.fixture(scope="session")
def saved_arrays():
    """Every array a run saved at a step (model, weight average, optimizer, RNG), as numpy, by path."""
    import jax
    import numpy as np

    from digitjax import checkpoint

    def arrays(workdir: Path, step: int) -> dict:
        # Onto this process's first device, whatever mesh wrote them.
        here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        checkpointer = checkpoint.ocp.StandardCheckpointer()
        out = {}
        for name in ("model", "ema", "opt", "rng"):
            path = Path(workdir) / "checkpoints" / str(step) / name
            if path.is_dir():
                saved = checkpointer.metadata(path).item_metadata.tree
                target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here), saved)
                leaves = jax.tree_util.tree_leaves_with_path(checkpointer.restore(path, target))
                out |= {name + jax.tree_util.keystr(key): np.asarray(x) for key, x in leaves}
        return out

    return arrays
