import gzip
import hashlib
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from digitjax import data
from digitjax.errors import UserError


@pytest.mark.slow
def test_idx_files_read_and_checked(mnist_dir):
    arrays = data.read_idx_dir(mnist_dir)
    assert arrays["train_images"].shape == (60000, 28, 28)
    assert arrays["test_labels"].shape == (10000,)
    assert arrays["train_images"].dtype == np.uint8
    # Golden values of canonical MNIST: the first training label is 5, the first test label 7.
    assert arrays["train_labels"][:5].tolist() == [5, 0, 4, 1, 9]
    assert arrays["test_labels"][:3].tolist() == [7, 2, 1]
    assert np.bincount(arrays["test_labels"]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _copy(mnist_dir, tmp_path):
    folder = tmp_path / "idx" / "mnist"
    shutil.copytree(mnist_dir, folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


def _rewrite(path, mutate):
    raw = bytearray(gzip.decompress(path.read_bytes()))
    path.write_bytes(gzip.compress(bytes(mutate(raw))))


@pytest.mark.slow
@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda raw: b"\x00\x00\x08\x01" + raw[4:], "wrong IDX magic"),
        (lambda raw: raw[:-100], "expected shape"),
        (lambda raw: raw[:-1] + bytes([(raw[-1] + 1) % 256]), "the sha256"),
    ],
    ids=["magic", "truncated", "one-pixel"],
)
def test_damaged_idx_file_names_the_file(mnist_dir, tmp_path, mutate, expected):
    folder = _copy(mnist_dir, tmp_path)
    _rewrite(folder / "t10k-images-idx3-ubyte.gz", mutate)
    with pytest.raises(UserError, match=f"t10k-images-idx3-ubyte.gz is damaged: {expected}"):
        data.read_idx_dir(folder)


@pytest.mark.slow
def test_not_gzip_and_missing_file(mnist_dir, tmp_path):
    folder = _copy(mnist_dir, tmp_path)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"hello")
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz is damaged: it is not a readable gzip"):
        data.read_idx_dir(folder)
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz is missing"):
        data.read_idx_dir(folder)


@pytest.mark.slow
def test_uncompressed_files_are_accepted(mnist_dir, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    for spec in data.IDX_FILES.values():
        (folder / spec.name).write_bytes(gzip.decompress((mnist_dir / f"{spec.name}.gz").read_bytes()))
    assert data.read_idx_dir(folder)["test_images"].shape == (10000, 28, 28)


@pytest.mark.slow
def test_prepared_dataset_is_standard_tfds_mnist(tfds_dir, mnist_dir, test_split):
    builder = tfds.builder("mnist", data_dir=str(tfds_dir))  # the stock builder reads our files
    assert str(builder.info.version) == "3.0.1"
    assert builder.info.splits["train"].num_examples == 60000
    assert list((tfds_dir / "mnist" / "3.0.1").glob("mnist-test.array_record*"))
    source = tfds.data_source("mnist", split="test", data_dir=str(tfds_dir))
    assert len(source) == 10000 and source[0]["image"].shape == (28, 28, 1)
    # Same images and labels as the IDX files, in TFDS's (shuffled) order.
    idx = data.read_idx_dir(mnist_dir)

    def digest(images, labels):
        return sorted(
            hashlib.sha1(image.tobytes() + bytes([label])).hexdigest() for image, label in zip(images, labels)
        )

    assert digest(test_split.images_NxHxW, test_split.labels_N) == digest(idx["test_images"], idx["test_labels"])
    assert not np.array_equal(test_split.labels_N, idx["test_labels"])


@pytest.mark.slow
def test_prepare_refuses_damaged_files_and_writes_nothing(mnist_dir, tmp_path):
    folder = _copy(mnist_dir, tmp_path)
    _rewrite(folder / "train-images-idx3-ubyte.gz", lambda raw: raw[:-1] + b"\x01")
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz is damaged"):
        data.prepare("mnist", data.Paths(str(tmp_path / "tfds"), str(folder.parent)))
    assert not data.is_prepared("mnist", tmp_path / "tfds")


@pytest.mark.parametrize("name", sorted(data.DATASETS))
def test_no_data_and_no_network_says_what_to_do(name, tmp_path, monkeypatch):
    monkeypatch.delenv(data.IDX_DIR_ENV, raising=False)
    registered = data.registered_downloads(name)
    # Nothing listens on the discard port.
    unreachable = {file: (f"http://127.0.0.1:9/{file}", sha) for file, (_, sha) in registered.items()}
    monkeypatch.setattr(data, "registered_downloads", lambda _: unreachable)
    with pytest.raises(UserError, match=f"Could not download http://127.0.0.1:9/.*{name}/.*--idx_dir"):
        data.prepare(name, data.Paths(str(tmp_path / "tfds")))
    assert not (tmp_path / "tfds" / name).exists()


@pytest.mark.parametrize("name", sorted(data.DATASETS))
def test_downloads_are_those_tfds_registers(name):
    registered = data.registered_downloads(name)
    assert set(registered) == {f"{spec.name}.gz" for spec in data.IDX_FILES.values()}
    for file, (url, sha256) in registered.items():
        assert url.startswith("http") and url.endswith(file) and len(sha256) == 64


def _idx_gz(spec: data.IdxFile, fill: int) -> bytes:
    dims = b"".join(d.to_bytes(4, "big") for d in spec.shape)
    return gzip.compress(spec.magic.to_bytes(4, "big") + dims + bytes([fill]) * int(np.prod(spec.shape)))


@pytest.mark.parametrize("name", ["fashion_mnist", "kmnist"])
def test_other_datasets_idx_files_are_checked_against_tfds(name, tmp_path, monkeypatch):
    """Files of the right shape are read only if each .gz is the one TFDS registers."""
    folder = tmp_path / name
    folder.mkdir()
    files = {key: _idx_gz(spec, 3) for key, spec in data.IDX_FILES.items()}
    for key, payload in files.items():
        (folder / f"{data.IDX_FILES[key].name}.gz").write_bytes(payload)
    with pytest.raises(UserError, match=f"is not the published .*TFDS registers.*--idx_dir.*{name}/"):
        data.read_idx_dir(folder, name)
    published = {
        f"{data.IDX_FILES[key].name}.gz": ("http://x/", hashlib.sha256(payload).hexdigest())
        for key, payload in files.items()
    }
    monkeypatch.setattr(data, "registered_downloads", lambda _: published)
    assert data.read_idx_dir(folder, name)["train_images"].shape == (60000, 28, 28)


def test_unknown_dataset_is_a_clear_error():
    from experiments import smoke

    config = smoke.get_config()
    config.dataset = "cifar10"
    with pytest.raises(UserError, match="Unknown dataset 'cifar10'.*fashion_mnist.*kmnist.*mnist"):
        data.dataset_of(config)


def test_epoch_order_is_seeded_full_batches():
    key = jax.random.key(0)
    order = np.asarray(data.epoch_order(key, 0, 1000, 64))
    assert order.shape == (15, 64)
    assert len(set(order.ravel().tolist())) == 15 * 64  # no repeats within an epoch
    assert np.array_equal(order, np.asarray(data.epoch_order(key, 0, 1000, 64)))
    assert not np.array_equal(order, np.asarray(data.epoch_order(key, 1, 1000, 64)))


def test_splits_hold_out_validation_and_read_tfds(synthetic_tfds):
    from experiments import smoke

    config = smoke.get_config()
    config.validation_size, config.train_size = 400, 1000
    train, evaluated = data.splits(config, data.Paths(str(synthetic_tfds), "/nonexistent"))
    assert train.images_NxHxW.shape == (1000, 28, 28) and train.images_NxHxW.dtype == np.uint8
    assert set(evaluated) == {"test", "val"} and len(evaluated["val"].labels_N) == 400
    assert len(evaluated["test"].labels_N) == 500 and evaluated["test"].labels_N.dtype == np.int32
    whole = data.load("mnist", "train", data.Paths(str(synthetic_tfds))).labels_N
    np.testing.assert_array_equal(evaluated["val"].labels_N, whole[-400:])  # the tail, apart from training
    np.testing.assert_array_equal(train.labels_N, whole[:1000])


# A TFRecord TFDS `mnist/3.0.1` as TensorFlow writes it (32 random images, made by TFDS with
# TensorFlow): the copy a TensorFlow or Flax-examples user already has in ~/tensorflow_datasets.
TFRECORD_TFDS = Path(__file__).parent / "data" / "tfrecord_tfds"


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_another_tools_tfds_mnist_is_left_byte_for_byte(tmp_path, run_cli):
    data_dir = tmp_path / "tensorflow_datasets"
    shutil.copytree(TFRECORD_TFDS, data_dir)  # copies the mtimes too
    before = _files(data_dir / "mnist")
    assert any(name.endswith("tfrecord-00000-of-00001") for name in before)
    env = {"TFDS_DATA_DIR": str(data_dir)}
    prepared = run_cli("digitjax.data", "--data_dir", str(data_dir), **env)
    own = data_dir / data.OWN_SUBDIR / "mnist" / "3.0.1"
    assert f"{data_dir / 'mnist' / '3.0.1'} holds TFDS mnist in a format" in prepared.stderr
    assert f"writes its own array_record copy to {own}" in prepared.stderr
    assert "train: 60000 images" in prepared.stdout and any(own.glob("mnist-train.array_record*"))
    workdir = tmp_path / "run"
    run_cli("digitjax.train", "--config", "experiments/smoke.py", "--workdir", str(workdir), **env)
    report = run_cli("digitjax.evaluate", "--workdir", str(workdir), "--json", **env)
    assert '"test_accuracy"' in report.stdout
    assert _files(data_dir / "mnist") == before, "not one byte or mtime of the TFRecord copy changed"
    assert data.readable_root("mnist", data.Paths(str(data_dir))) == data_dir / data.OWN_SUBDIR
