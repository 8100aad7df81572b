"""Data parallelism over every device of every process: one mesh, state replicated, batches split.

The trainer's step is written for one device; placing its inputs on a mesh is all it takes. The
parameters and optimizer state are replicated, the dataset and each batch are split along their
first axis over the mesh's `data` axis, and XLA's partitioner adds the gradient all-reduce. BatchNorm
statistics stay those of the whole batch, so N devices compute what one would, up to the order
of float additions.

Multi-host (a GPU cluster, a TPU slice): one process per host, each running the same command
with the process flags of `digitjax.train`; every process loads the data and computes the same
host-side values, and process 0 alone writes logs, metrics and checkpoint bookkeeping.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"


def joins_cluster(coordinator_address: str | None, distributed: bool | None, environ=os.environ) -> bool:
    """Whether this process joins a multi-host run: the explicit flags, `--distributed` (JAX then finds
    the cluster itself: Cloud TPU, SLURM, Open MPI), or JAX's own JAX_COORDINATOR_ADDRESS.

    Nothing is guessed from a launcher's variables: one process on a cluster node trains alone
    unless told otherwise, and `--nodistributed` keeps it alone even with JAX_COORDINATOR_ADDRESS set."""
    if coordinator_address is not None:
        return True
    if distributed is not None:
        return distributed
    return bool(environ.get("JAX_COORDINATOR_ADDRESS"))


def initialize(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None, distributed: bool | None
) -> None:
    """Joins the processes of a multi-host run (`joins_cluster`); a single process does nothing."""
    if not joins_cluster(coordinator_address, distributed):
        return
    # CPU processes (tests, CPU clusters) exchange collectives over TCP; GPUs and TPUs have their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


@functools.cache
def mesh() -> jax.sharding.Mesh:
    """Every device of every process on one `data` axis."""
    return jax.make_mesh((jax.device_count(),), (DATA,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated() -> NamedSharding:
    return NamedSharding(mesh(), P())


def split() -> NamedSharding:
    """Along the first axis (the batch), over all devices."""
    return NamedSharding(mesh(), P(DATA))


def put(tree, sharding: NamedSharding):
    """Host values, the same in every process, as global arrays with `sharding`.

    `jax.device_put` cannot reach another process's devices; each process supplies its shards.
    """

    def leaf(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            return jax.random.wrap_key_data(leaf(jax.random.key_data(x)), impl=impl)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(leaf, tree)


def pad_to_split(tree):
    """Pads each array's first axis with zeros to a multiple of the device count."""

    def leaf(x):
        pad = -len(x) % jax.device_count()
        return np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x

    return jax.tree.map(leaf, tree)


def is_main() -> bool:
    """The process that writes files and prints."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Waits for every process to reach the same point."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
