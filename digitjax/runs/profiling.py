"""A `jax.profiler` trace of chosen training steps, into the run's TensorBoard folder.

    python -m digitjax.train --config experiments/smoke.py --config.profile_steps="(20, 30)"
    tensorboard --logdir checkpoints/smoke/tensorboard     # the Profile tab (pip install -e ".[tensorboard]")

The trainer splits its dispatches at the trace's first and last step, so the trace holds exactly
those steps (the steps already compiled, unless the first is the run's first), and waits for
them to finish before it stops the trace. The time the trace costs counts as training time.
"""

from __future__ import annotations

import shutil
import tempfile

import jax
from etils import epath

from digitjax.errors import UserError
from digitjax.runs import objectstore


class StepTrace:
    """Traces steps [first, last) of a run; `steps` is the config's `profile_steps`, () for none."""

    def __init__(self, steps: tuple, logdir: epath.Path):
        if steps and not (len(steps) == 2 and all(isinstance(s, int) for s in steps) and 0 <= steps[0] < steps[1]):
            raise UserError(
                f"profile_steps {steps!r} should be (first, last) with 0 <= first < last, e.g. "
                f'--config.profile_steps="(20, 30)", or () for no trace.'
            )
        self.first, self.last = steps if steps else (None, None)
        self.logdir = logdir
        # The profiler writes local files only: a workdir on a bucket gets the trace when it stops.
        remote = steps and objectstore.is_remote(logdir)
        self.local = epath.Path(tempfile.mkdtemp(prefix="digitjax-trace-")) if remote else logdir
        self.active = False

    def boundaries(self, step: int) -> list[int]:
        """Where a dispatch from `step` must end, so that the trace starts and stops between dispatches."""
        return [b for b in (self.first, self.last) if b is not None and b > step]

    def before_dispatch(self, step: int) -> None:
        if step == self.first:
            jax.profiler.start_trace(str(self.local))
            self.active = True

    def after_dispatch(self, step: int, done: jax.Array) -> None:
        if self.active and step >= self.last:
            self.stop(done)

    def stop(self, done: jax.Array | None = None) -> None:
        if self.active:
            if done is not None:
                done.block_until_ready()
            jax.profiler.stop_trace()
            self.active = False
            if self.local != self.logdir:
                for name in objectstore.files(self.local):
                    (self.logdir / name).write_bytes((self.local / name).read_bytes())
                shutil.rmtree(self.local)
