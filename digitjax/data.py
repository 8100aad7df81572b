"""The datasets: TFDS's 28x28 grayscale 10-class sets, prepared from IDX files, kept on device.

`config.dataset` names one of DATASETS. Each is written as the standard TFDS dataset of that name
(same version, features and array_record files), so `tfds.data_source(name, data_dir=...)` reads
it anywhere. The stock builders need TensorFlow to extract the IDX files; `read_idx_dir` reads them
with gzip and numpy instead, checked against known hashes, and no TensorFlow is needed.

    python -m digitjax.data --idx_dir ../shared/data                          # mnist from ../shared/data/mnist
    python -m digitjax.data --dataset fashion_mnist                           # TFDS's download
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

IDX_DIR_ENV = "DIGITJAX_IDX_DIR"
TFDS_DIR_ENV = "TFDS_DATA_DIR"
# Where digitjax writes its own array_record copy when the data dir holds another copy of a
# dataset (say the TFRecord one TensorFlow and the Flax examples prepare), which it never touches.
OWN_SUBDIR = "digitjax"


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str  # TFDS's name, also the subfolder of --idx_dir holding its IDX files
    builder: str  # TFDS's builder class, in tensorflow_datasets.image_classification.mnist
    class_names: tuple[str, ...]
    # sha256 of each IDX file's uncompressed bytes (keyed as IDX_FILES), where known: then any
    # gzip wrapper is accepted. Otherwise only the published .gz files, checked against TFDS.
    sha256: dict[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class IdxFile:
    name: str  # canonical file name, without .gz
    magic: int
    shape: tuple[int, ...]


# The same four files in every dataset of the MNIST format.
IDX_FILES = {
    "train_images": IdxFile("train-images-idx3-ubyte", 0x803, (60000, 28, 28)),
    "train_labels": IdxFile("train-labels-idx1-ubyte", 0x801, (60000,)),
    "test_images": IdxFile("t10k-images-idx3-ubyte", 0x803, (10000, 28, 28)),
    "test_labels": IdxFile("t10k-labels-idx1-ubyte", 0x801, (10000,)),
}

DATASETS = {
    "mnist": Dataset(
        "mnist",
        "MNIST",
        tuple("0123456789"),
        {
            "train_images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train_labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "test_images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "test_labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    ),
    "fashion_mnist": Dataset(
        "fashion_mnist",
        "FashionMNIST",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    # One character for each of the ten rows of hiragana, as TFDS names them.
    "kmnist": Dataset("kmnist", "KMNIST", ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
}


def dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise UserError(f"Unknown dataset {name!r}; the config's dataset must be one of {sorted(DATASETS)}.")
    return DATASETS[name]


def dataset_of(config) -> str:
    """The dataset a config trains on (configs written before the field: MNIST, as then)."""
    return dataset(config.get("dataset", "mnist")).name


@dataclasses.dataclass(frozen=True)
class Paths:
    """Where datasets are read from: one object, handed from the command line to whatever loads data."""

    data_dir: str | None = None  # TFDS data dir; None: $TFDS_DATA_DIR, else ~/tensorflow_datasets
    # A folder with one subfolder of IDX files per dataset, named for it (mnist/, fashion_mnist/,
    # kmnist/); None: $DIGITJAX_IDX_DIR. A dataset without a subfolder there is downloaded.
    idx_dir: str | None = None

    def tfds_root(self) -> Path:
        return Path(self.data_dir or os.environ.get(TFDS_DIR_ENV) or "~/tensorflow_datasets").expanduser()

    def idx_folder(self, name: str) -> Path | None:
        root = self.idx_dir or os.environ.get(IDX_DIR_ENV)
        return Path(root).expanduser() / name if root else None


def _fix(name: str) -> str:
    return (
        f"Point --idx_dir (or ${IDX_DIR_ENV}) at a folder whose subfolder {name}/ holds the four canonical "
        f"{name} IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        f"t10k-labels-idx1-ubyte.gz), or get a fresh copy of this one."
    )


def _find(folder: Path, spec: IdxFile, name: str) -> Path:
    for candidate in (folder / f"{spec.name}.gz", folder / spec.name):
        if candidate.is_file():
            return candidate
    raise UserError(f"{name} file {spec.name}.gz is missing from {folder}. {_fix(name)}")


def _check_bytes(path: Path, key: str, ds: Dataset, packed: bytes, raw: bytes) -> None:
    """The file is the published one: its uncompressed bytes where their hash is known, else the
    .gz itself against TFDS's registered checksum."""
    if ds.sha256 is not None:
        if hashlib.sha256(raw).hexdigest() != ds.sha256[key]:
            raise UserError(
                f"{ds.name} file {path} is damaged: the sha256 of its uncompressed bytes is not the known one "
                f"for {IDX_FILES[key].name}. {_fix(ds.name)}"
            )
        return
    _, checksum = registered_downloads(ds.name)[f"{IDX_FILES[key].name}.gz"]
    if path.suffix != ".gz" or hashlib.sha256(packed).hexdigest() != checksum:
        raise UserError(
            f"{ds.name} file {path} is not the published {IDX_FILES[key].name}.gz: digitjax checks {ds.name}'s "
            f"files against the sha256 TFDS registers for the .gz files. {_fix(ds.name)}"
        )


def read_idx(path: Path, key: str, ds: Dataset) -> np.ndarray:
    """Reads one IDX file (gzipped or not) and checks magic, shape, size and its hash."""
    spec = IDX_FILES[key]
    try:
        packed = path.read_bytes()
        raw = gzip.decompress(packed) if path.suffix == ".gz" else packed
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{ds.name} file {path} is damaged: it is not a readable gzip file ({e}). {_fix(ds.name)}")
    ndim = len(spec.shape)
    header = 4 + 4 * ndim
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != spec.magic:
        found = raw[:4].hex() if len(raw) >= 4 else "nothing"
        raise UserError(
            f"{ds.name} file {path} is damaged: wrong IDX magic number (expected {spec.magic:08x}, found {found}). "
            f"{_fix(ds.name)}"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims != spec.shape or len(raw) != header + int(np.prod(spec.shape)):
        raise UserError(
            f"{ds.name} file {path} is damaged: expected shape {spec.shape} in "
            f"{header + int(np.prod(spec.shape))} bytes, found {dims} in {len(raw)} bytes. {_fix(ds.name)}"
        )
    _check_bytes(path, key, ds, packed, raw)
    return np.frombuffer(raw, np.uint8, offset=header).reshape(spec.shape)


def read_idx_dir(folder: str | os.PathLike, name: str = "mnist") -> dict[str, np.ndarray]:
    """Reads and checks the four IDX files of dataset `name` in a folder."""
    ds, folder = dataset(name), Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{name} folder {folder} does not exist. {_fix(name)}")
    return {key: read_idx(_find(folder, spec, name), key, ds) for key, spec in IDX_FILES.items()}


def _builder_base(name: str):
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    return getattr(tfds_mnist, dataset(name).builder)


def registered_downloads(name: str = "mnist") -> dict[str, tuple[str, str]]:
    """The stock TFDS builder's own record of its files: name -> (URL, sha256 of the .gz)."""
    return {info.filename: (url, info.checksum) for url, info in _builder_base(name).url_infos.items()}


def download(name: str, dest: Path) -> Path:
    """Downloads the dataset's four .gz files from where TFDS does, checked against TFDS's registered checksums."""
    dest.mkdir(parents=True, exist_ok=True)
    registered = registered_downloads(name)
    for spec in IDX_FILES.values():
        file = f"{spec.name}.gz"
        url, checksum = registered[file]
        target = dest / file
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == checksum:
            continue
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                payload = response.read()
        except OSError as e:
            raise UserError(
                f"Could not download {url} ({e}). Without internet access, get the four {name} IDX files some "
                f"other way and put them in <folder>/{name}/, then pass --idx_dir <folder> (or ${IDX_DIR_ENV})."
            )
        if hashlib.sha256(payload).hexdigest() != checksum:
            raise UserError(
                f"The download of {file} does not match TFDS's registered checksum; try again later or use "
                f"--idx_dir with a local copy."
            )
        target.write_bytes(payload)
    return dest


@functools.cache
def _builder_class(name: str):
    base = _builder_base(name)

    class FromArrays(base, skip_registration=True):
        """The stock builder, fed from checked arrays (of the IDX files) without TensorFlow."""

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

    FromArrays.name = name
    return FromArrays


def _version_dir(root: Path, name: str) -> Path:
    return root / name / str(_builder_base(name).VERSION)


def is_prepared(name: str, root: Path) -> bool:
    """Whether `root` holds the TFDS dataset as array_record (digitjax's or anyone's): readable as is."""
    info = _version_dir(root, name) / "dataset_info.json"
    return info.is_file() and any(info.parent.glob(f"{name}-train.array_record*"))


def readable_root(name: str, paths: Paths) -> Path:
    """The TFDS data dir digitjax reads dataset `name` from: the data dir itself, unless it holds
    another copy (another format) there, which is left as it is; then digitjax's own beside it."""
    root = paths.tfds_root()
    if is_prepared(name, root) or not _version_dir(root, name).exists():
        return root
    return root / OWN_SUBDIR


def prepare(name: str = "mnist", paths: Paths = Paths()) -> Path:
    """Writes TFDS dataset `name` as array_record unless it is readable already; returns the data dir to read.

    Never deletes or rewrites a dataset it did not write: where the data dir holds another copy
    (e.g. TFRecord, which only TensorFlow reads), digitjax writes its own under `<data dir>/digitjax/`
    and says so."""
    root = readable_root(name, paths)
    if is_prepared(name, root):
        return root
    if root.name == OWN_SUBDIR:
        print(
            f"{_version_dir(root.parent, name)} holds TFDS {name} in a format digitjax cannot read without "
            f"TensorFlow; it is left as it is. digitjax writes its own array_record copy to "
            f"{_version_dir(root, name)}.",
            file=sys.stderr,
        )
    folder = paths.idx_folder(name)
    if folder is None or not folder.is_dir():
        folder = download(name, root / "downloads" / f"{name}_idx")
    # Read and checked before TFDS creates anything.
    return write_tfds(root, read_idx_dir(folder, name), name)


def write_tfds(root: Path, arrays: dict[str, np.ndarray], name: str = "mnist") -> Path:
    """Writes `arrays` (keyed as IDX_FILES: uint8 images NxHxW, labels N) as TFDS dataset `name`
    under `root`, which must not hold it yet.

    Built beside the target and moved into place, so an interrupted build leaves nothing that
    looks prepared. Tests write synthetic images this way; `prepare` writes the real ones."""
    root = Path(root)
    target = _version_dir(root, name)
    if target.exists():
        raise UserError(f"{target} exists already; digitjax writes a dataset only where there is none.")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-build-") as tmp:
        builder = _builder_class(name)(arrays=arrays, data_dir=tmp, file_format="array_record")
        builder.download_and_prepare(download_dir=os.path.join(tmp, "downloads"))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(builder.data_dir, target)
    return root


@dataclasses.dataclass(frozen=True)
class Split:
    images_NxHxW: np.ndarray  # uint8, 0 = background, 255 = ink
    labels_N: np.ndarray  # int32


def load(name: str, split: str, paths: Paths = Paths()) -> Split:
    """Loads a split of dataset `name` (`train`, `test`, or any TFDS slice like `train[:5000]`) as uint8 arrays."""
    import tensorflow_datasets as tfds

    root = prepare(name, paths)
    source = tfds.data_source(name, split=split, data_dir=str(root))
    records = source.__getitems__(range(len(source)))
    images = np.stack([r["image"][..., 0] for r in records])
    labels = np.asarray([r["label"] for r in records], np.int32)
    return Split(images, labels)


def splits(config, paths: Paths = Paths()) -> tuple[Split, dict[str, Split]]:
    """The config's training split and the evaluated ones: test, and `val` when the config holds
    out `validation_size` training images; `train_size` keeps only the first N of the rest."""
    name = dataset_of(config)
    train = load(name, "train", paths)
    evaluated = {"test": load(name, "test", paths)}
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
    from digitjax.canvas import drawings

    if dataset_of(config) != "mnist":
        raise UserError(f"The canvas's drawings are digits: train on them with dataset mnist, not {config.dataset}.")
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

    parser = argparse.ArgumentParser(description="Prepare a TFDS dataset from local IDX files (or TFDS's download).")
    parser.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    parser.add_argument("--data_dir", help=f"TFDS data dir (default ${TFDS_DIR_ENV} or ~/tensorflow_datasets)")
    parser.add_argument("--idx_dir", help=f"folder with a subfolder of IDX files per dataset (default ${IDX_DIR_ENV})")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        paths = Paths(args.data_dir, args.idx_dir)
        root = prepare(args.dataset, paths)
        for split in ("train", "test"):
            s = load(args.dataset, split, paths)
            print(f"{split}: {len(s.labels_N)} images at {root / args.dataset}")


if __name__ == "__main__":
    main()
