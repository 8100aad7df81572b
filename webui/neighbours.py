"""The training digits nearest to an input in a model's embedding (the last layer it shows).

The training set is embedded once per served checkpoint; a query is then one jitted matmul
against all of it (squared distances by |a|^2 - 2ab + |b|^2) and a top-k.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from digitjax import layers
from digitjax import model as model_lib


@dataclasses.dataclass(frozen=True)
class Index:
    embeddings_NxD: jax.Array  # on the device, float32
    sq_norms_N: jax.Array
    images_NxHxW: np.ndarray  # uint8, to show the neighbours found
    labels_N: np.ndarray


def embed(model: nnx.Module, images_NxHxW: np.ndarray, batch_size: int = 1000, progress: bool = False) -> jax.Array:
    """The embedding of every image, NxD, computed a batch at a time on the device."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def embed_batch(state, images_BxHxW):
        _, recorded = layers.record(nnx.merge(graphdef, state), model_lib.to_input(images_BxHxW))
        return layers.embedding(recorded)

    n = len(images_NxHxW)
    pad = -n % batch_size
    padded = np.concatenate([images_NxHxW, np.zeros((pad, *images_NxHxW.shape[1:]), np.uint8)])
    starts = range(0, n + pad, batch_size)
    batches = [embed_batch(state, padded[i : i + batch_size]) for i in tqdm(starts, "embedding", disable=not progress)]
    return jnp.concatenate(batches)[:n]


def build(model: nnx.Module, images_NxHxW: np.ndarray, labels_N: np.ndarray, cache_dir: Path | None = None) -> Index:
    """The index of a training set; its embeddings read from `cache_dir` when there, else computed
    (a few seconds to a minute on a CPU) and written there for the next start.

    Kept as float16 (half the disk), computed or cached alike, so a search never depends on which.
    """
    key = f"{len(labels_N)}-{zlib.crc32(images_NxHxW.tobytes()) ^ zlib.crc32(labels_N.tobytes()):08x}"
    path = cache_dir / f"train-{key}.npy" if cache_dir else None
    try:
        embeddings_NxD = np.load(path) if path else None
    except (FileNotFoundError, ValueError, OSError):  # none yet, or a damaged one: computed again
        embeddings_NxD = None
    if embeddings_NxD is None or embeddings_NxD.shape[0] != len(labels_N):
        embeddings_NxD = np.asarray(embed(model, images_NxHxW, progress=True)).astype(np.float16)
        if path:
            _save(path, embeddings_NxD)
    on_device = jnp.asarray(embeddings_NxD, jnp.float32)
    return Index(on_device, (on_device**2).sum(-1), images_NxHxW, labels_N)


def _save(path: Path, embeddings_NxD: np.ndarray) -> None:
    """Whole or not at all (several server processes may start at once); a read-only run is fine."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        with open(partial, "wb") as f:
            np.save(f, embeddings_NxD)
        os.replace(partial, path)
    except OSError as e:
        logging.getLogger(__name__).warning("embeddings not cached in %s: %s", path.parent, e)


def nearest(query_BxD: jax.Array, embeddings_NxD: jax.Array, sq_norms_N: jax.Array, k: int):
    """Indices BxK of the k nearest embeddings (Euclidean) and their distances, nearest first.

    Traceable: the served predict function calls it inside its own jit.
    """
    sq_dist_BxN = sq_norms_N[None] - 2 * query_BxD @ embeddings_NxD.T + (query_BxD**2).sum(-1, keepdims=True)
    neg_sq_dist_BxK, indices_BxK = jax.lax.top_k(-sq_dist_BxN, k)
    return indices_BxK, jnp.sqrt(jnp.maximum(-neg_sq_dist_BxK, 0.0))
