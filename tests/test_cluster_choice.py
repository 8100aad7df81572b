"""Whether a process joins a multi-host run: told, never guessed from a launcher's variables."""

import pytest

from digitjax.runs import parallel

SLURM_TWO_TASKS = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_STEP_NODELIST": "n1"}


@pytest.mark.parametrize(
    "coordinator, distributed, environ, joins",
    [
        (None, None, {}, False),  # a laptop
        (None, None, SLURM_TWO_TASKS, False),  # one process started by hand on a cluster's node
        (None, True, SLURM_TWO_TASKS, True),  # srun ... --distributed: JAX finds the others
        ("host0:1234", None, {}, True),  # the explicit flags
        (None, None, {"JAX_COORDINATOR_ADDRESS": "host0:1234"}, True),  # JAX's own variable
        (None, False, {"JAX_COORDINATOR_ADDRESS": "host0:1234"}, False),  # --nodistributed wins
        (None, None, {"JAX_COORDINATOR_ADDRESS": ""}, False),
    ],
)
def test_joins_a_cluster_only_when_told(coordinator, distributed, environ, joins):
    assert parallel.joins_cluster(coordinator, distributed, environ) is joins


def test_a_single_process_on_a_cluster_node_initializes_nothing(monkeypatch):
    """No `jax.distributed.initialize()` (which would wait for the other tasks) for one process alone."""
    for key, value in SLURM_TWO_TASKS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    called = []
    monkeypatch.setattr(parallel.jax.distributed, "initialize", lambda *a, **k: called.append(a))
    parallel.initialize(None, None, None, None)
    assert called == []
    before = parallel.jax.config.jax_cpu_collectives_implementation
    try:
        parallel.initialize(None, None, None, True)
    finally:
        parallel.jax.config.update("jax_cpu_collectives_implementation", before)
    assert called == [(None, None, None)]
