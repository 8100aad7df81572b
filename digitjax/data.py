"""MNIST through tensorflow-datasets, prepared from the four IDX files, kept on device.

The dataset written here is the standard TFDS `mnist` (same name, version, features and
array_record files), so `tfds.data_source("mnist", data_dir=...)` reads it anywhere. The
stock builder needs TensorFlow to extract the IDX files and rejects re-packed gzip files;
`read_idx_dir` reads them with gzip and numpy instead and checks the uncompressed bytes.

    python -m digitjax.data --mnist_dir ../shared/data/mnist   # prepare from local files
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

import jax
import numpy as np

from digitjax.errors import UserError

MNIST_DIR_ENV = "DIGITJAX_MNIST_DIR"
TFDS_DIR_ENV = "TFDS_DATA_DIR"
# Where digitjax writes its own array_record copy when the data dir holds another `mnist` (say
# the TFRecord copy TensorFlow and the Flax examples prepare), which it never touches.
OWN_SUBDIR = "digitjax"


@dataclasses.dataclass(frozen=True)
class IdxFile:
    name: str  # canonical file name, without .gz
    magic: int
    shape: tuple[int, ...]
    sha256: str  # of the uncompressed bytes, so any gzip wrapper is accepted


IDX_FILES = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte",
        0x803,
        (60000, 28, 28),
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte",
        0x801,
        (60000,),
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte",
        0x803,
        (10000, 28, 28),
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte",
        0x801,
        (10000,),
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}

_FIX = (
    "Point --mnist_dir (or ${env}) at a folder holding the four canonical MNIST files "
    "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz), or get a fresh copy of this one."
).replace("${env}", MNIST_DIR_ENV)


def _find(folder: Path, spec: IdxFile) -> Path:
    for candidate in (folder / f"{spec.name}.gz", folder / spec.name):
        if candidate.is_file():
            return candidate
    raise UserError(f"MNIST file {spec.name}.gz is missing from {folder}. {_FIX}")


def read_idx(path: Path, spec: IdxFile) -> np.ndarray:
    """Reads one IDX file (gzipped or not) and checks magic, shape, size and sha256."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"MNIST file {path} is damaged: it is not a readable gzip file ({e}). {_FIX}")
    ndim = len(spec.shape)
    header = 4 + 4 * ndim
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != spec.magic:
        found = raw[:4].hex() if len(raw) >= 4 else "nothing"
        raise UserError(
            f"MNIST file {path} is damaged: wrong IDX magic number (expected {spec.magic:08x}, found {found}). {_FIX}"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims != spec.shape or len(raw) != header + int(np.prod(spec.shape)):
        raise UserError(
            f"MNIST file {path} is damaged: expected shape {spec.shape} in "
            f"{header + int(np.prod(spec.shape))} bytes, found {dims} in {len(raw)} bytes. {_FIX}"
        )
    if hashlib.sha256(raw).hexdigest() != spec.sha256:
        raise UserError(
            f"MNIST file {path} is damaged: the sha256 of its uncompressed bytes is not the "
            f"known one for {spec.name}. {_FIX}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(spec.shape)


def read_idx_dir(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads and checks the four MNIST IDX files of a folder."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"MNIST folder {folder} does not exist. {_FIX}")
    return {key: read_idx(_find(folder, spec), spec) for key, spec in IDX_FILES.items()}


def registered_downloads() -> dict[str, tuple[str, str]]:
    """The stock TFDS `mnist` builder's own record of its files: name -> (URL, sha256 of the .gz)."""
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    return {info.filename: (url, info.checksum) for url, info in tfds_mnist.MNIST.url_infos.items()}


def download(dest: Path) -> Path:
    """Downloads the four .gz files from where TFDS does, checked against TFDS's registered checksums."""
    dest.mkdir(parents=True, exist_ok=True)
    registered = registered_downloads()
    for spec in IDX_FILES.values():
        name = f"{spec.name}.gz"
        url, checksum = registered[name]
        target = dest / name
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == checksum:
            continue
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                payload = response.read()
        except OSError as e:
            raise UserError(
                f"Could not download {url} ({e}). Without internet access, get the "
                f"four MNIST IDX files some other way and pass their folder with --mnist_dir "
                f"(or {MNIST_DIR_ENV})."
            )
        if hashlib.sha256(payload).hexdigest() != checksum:
            raise UserError(
                f"The download of {name} does not match TFDS's registered checksum; try again "
                f"later or use --mnist_dir with a local copy."
            )
        target.write_bytes(payload)
    return dest


def _builder_class():
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    class ArraysMNIST(tfds_mnist.MNIST, skip_registration=True):
        """The stock `mnist` builder, fed from checked arrays (of the IDX files) without TensorFlow."""

        name = "mnist"

        def __init__(self, *, arrays: dict[str, np.ndarray], **kwargs):
            self._arrays = arrays
            super().__init__(**kwargs)

        def _split_generators(self, dl_manager):
            return {
                split: self._generate_examples(self._arrays[f"{split}_images"], self._arrays[f"{split}_labels"])
                for split in ("train", "test")
            }

        def _generate_examples(self, images, labels):
            from PIL import Image

            # The index is the key, as in the stock builder, so TFDS shuffles identically.
            for index, (image, label) in enumerate(zip(images, labels)):
                yield index, {"image": Image.fromarray(image), "label": int(label)}

    return ArraysMNIST


def data_dir_or_default(data_dir: str | None) -> Path:
    return Path(data_dir or os.environ.get(TFDS_DIR_ENV) or "~/tensorflow_datasets").expanduser()


def _version_dir(root: Path) -> Path:
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    return root / "mnist" / str(tfds_mnist.MNIST.VERSION)


def is_prepared(data_dir: str | None = None) -> bool:
    """Whether the data dir holds TFDS `mnist` as array_record (digitjax's or anyone's): readable as is."""
    info = _version_dir(data_dir_or_default(data_dir)) / "dataset_info.json"
    return info.is_file() and any(info.parent.glob("mnist-train.array_record*"))


def readable_root(data_dir: str | None = None) -> Path:
    """The TFDS data dir digitjax reads `mnist` from: the data dir itself, unless it holds another
    copy (another format) there, which is left as it is; then digitjax's own beside it."""
    root = data_dir_or_default(data_dir)
    if is_prepared(str(root)) or not _version_dir(root).exists():
        return root
    return root / OWN_SUBDIR


def prepare(data_dir: str | None = None, mnist_dir: str | None = None) -> Path:
    """Writes TFDS `mnist` as array_record unless it is readable already; returns the data dir to read.

    Never deletes or rewrites a dataset it did not write: where the data dir holds another copy of
    `mnist` (e.g. TFRecord, which only TensorFlow reads), digitjax writes its own under
    `<data dir>/digitjax/` and says so."""
    root = readable_root(data_dir)
    if is_prepared(str(root)):
        return root
    if root.name == OWN_SUBDIR:
        other = _version_dir(root.parent)
        print(
            f"{other} holds TFDS mnist in a format digitjax cannot read without TensorFlow; it is left as it is. "
            f"digitjax writes its own array_record copy to {_version_dir(root)}.",
            file=sys.stderr,
        )
    mnist_dir = mnist_dir or os.environ.get(MNIST_DIR_ENV)
    idx_dir = Path(mnist_dir).expanduser() if mnist_dir else download(root / "downloads" / "mnist_idx")
    # Read and checked before TFDS creates anything.
    return write_tfds(root, read_idx_dir(idx_dir))


def write_tfds(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Writes `arrays` (keyed as IDX_FILES: uint8 images NxHxW, labels N) as TFDS `mnist` under `root`,
    which must not hold it yet.

    Built beside the target and moved into place, so an interrupted build leaves nothing that
    looks prepared. Tests write synthetic digits this way; `prepare` writes MNIST's."""
    root = Path(root)
    target = _version_dir(root)
    if target.exists():
        raise UserError(f"{target} exists already; digitjax writes a dataset only where there is none.")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".mnist-build-") as tmp:
        builder = _builder_class()(arrays=arrays, data_dir=tmp, file_format="array_record")
        builder.download_and_prepare(download_dir=os.path.join(tmp, "downloads"))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(builder.data_dir, target)
    return root


@dataclasses.dataclass(frozen=True)
class Split:
    images_NxHxW: np.ndarray  # uint8, 0 = background, 255 = ink
    labels_N: np.ndarray  # int32


def load(split: str, data_dir: str | None = None, mnist_dir: str | None = None) -> Split:
    """Loads a split (`train`, `test`, or any TFDS slice like `train[:5000]`) as uint8 arrays."""
    import tensorflow_datasets as tfds

    root = prepare(data_dir, mnist_dir)
    source = tfds.data_source("mnist", split=split, data_dir=str(root))
    records = source.__getitems__(range(len(source)))
    images = np.stack([r["image"][..., 0] for r in records])
    labels = np.asarray([r["label"] for r in records], np.int32)
    return Split(images, labels)


def splits(config, data_dir: str | None = None, mnist_dir: str | None = None) -> tuple[Split, dict[str, Split]]:
    """The config's training split and the evaluated ones: test, and `val` when the config holds
    out `validation_size` training images; `train_size` keeps only the first N of the rest."""
    train = load("train", data_dir, mnist_dir)
    evaluated = {"test": load("test", data_dir, mnist_dir)}
    if config.validation_size:
        # TFDS stores the training split shuffled, so its tail is a random held-out slice.
        v = config.validation_size
        evaluated["val"] = Split(train.images_NxHxW[-v:], train.labels_N[-v:])
        train = Split(train.images_NxHxW[:-v], train.labels_N[:-v])
    if config.train_size:
        train = Split(train.images_NxHxW[: config.train_size], train.labels_N[: config.train_size])
    if config.get("drawings"):
        train = _with_drawings(config, train, evaluated)
    return train, evaluated


def _with_drawings(config, train: Split, evaluated: dict[str, Split]) -> Split:
    """MNIST's training split plus the canvas's labelled training drawings, each `drawings_weight`
    times; their test split is evaluated as `drawings` beside MNIST's."""
    from digitjax import drawings

    found = drawings.load(config.drawings)
    images_NxHxW, labels_N = found["train"]
    w = config.get("drawings_weight", 1)
    evaluated["drawings"] = Split(found["test"][0], found["test"][1].astype(np.int32))
    return Split(
        np.concatenate([train.images_NxHxW, np.repeat(images_NxHxW, w, axis=0)]),
        np.concatenate([train.labels_N, np.repeat(labels_N.astype(np.int32), w)]),
    )


@functools.partial(jax.jit, static_argnums=(2, 3))
def epoch_order(key: jax.Array, epoch: int, n: int, batch_size: int) -> jax.Array:
    """The epoch's shuffled example indices as full batches, drawn on the device from (key, epoch).

    The n % batch_size examples left over differ from epoch to epoch, so none is always dropped.
    """
    perm_N = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    steps = n // batch_size
    return perm_N[: steps * batch_size].reshape(steps, batch_size)


def main(argv=None) -> None:
    import argparse

    from digitjax.errors import exit_on_user_error

    parser = argparse.ArgumentParser(description="Prepare TFDS mnist from local IDX files.")
    parser.add_argument("--data_dir", help=f"TFDS data dir (default ${TFDS_DIR_ENV} or ~/tensorflow_datasets)")
    parser.add_argument("--mnist_dir", help=f"folder with the four IDX .gz files (default ${MNIST_DIR_ENV})")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        root = prepare(args.data_dir, args.mnist_dir)
        for split in ("train", "test"):
            s = load(split, str(root))
            print(f"{split}: {len(s.labels_N)} images at {root / 'mnist'}")


if __name__ == "__main__":
    main()
