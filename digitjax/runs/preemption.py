"""Stopping a run between dispatches on SIGTERM (a preemption notice) or SIGINT, with a checkpoint.

One process: a Python handler turns either signal into a flag the loop reads between dispatches.
Several (a multi-host run): JAX's preemption service, which `jax.distributed.initialize` starts,
takes SIGTERM itself in whichever process it lands, and `multihost_utils.reached_preemption_sync_point`
then answers True in every process at the same dispatch, so all stop at the same step and save it
together; SIGINT is handed on to it as SIGTERM. No collective runs on every dispatch.
"""

from __future__ import annotations

import os
import signal

import jax
from jax.experimental import multihost_utils


class StopRequest:
    """A context for the training loop: `requested()` once per dispatch says whether to stop."""

    def __init__(self):
        self.signal: int | None = None  # the signal this process received
        self._checks = 0

    def __enter__(self):
        self._shared = jax.process_count() > 1
        # In a multi-host run SIGTERM stays with JAX's preemption service.
        handled = (signal.SIGINT,) if self._shared else (signal.SIGTERM, signal.SIGINT)
        self._previous = {s: signal.signal(s, self._handle) for s in handled}
        return self

    def _handle(self, signum, frame):
        self.signal = signum
        if self._shared:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption service, which tells every process

    def requested(self) -> bool:
        """Whether to stop now; in a multi-host run, the same answer in every process at each call."""
        if not self._shared:
            return self.signal is not None
        # Every process makes the same calls (the same dispatches), so the count is a shared step id.
        self._checks += 1
        return multihost_utils.reached_preemption_sync_point(self._checks)

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
