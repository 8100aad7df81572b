"""A run's workdir: the lock that keeps it to one run at a time, the run's identity, and running out of space in it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os

import ml_collections
from etils import epath

from digitjax import data
from digitjax import model as model_lib
from digitjax.errors import UserError
from digitjax.runs import integrity, objectstore, orbax_internals

# Fields that give a checkpoint its shape or its run its identity: a workdir whose
# checkpoint differs in one of them belongs to another run and is never resumed or touched.
STRUCTURAL_FIELDS = ("optimizer", "batch_size", "seed", "validation_size")


MARKER = ".digitjax-run"  # written into every workdir a run claims: a folder digitjax may write in


def check_ours(workdir: epath.Path) -> None:
    """Refuses a folder that holds files but is not a digitjax run: digitjax writes only where it created."""
    objectstore.check_supported(workdir)
    if not workdir.is_dir() or (workdir / MARKER).exists() or (workdir / "checkpoints").is_dir():
        return  # new, or a run (runs written before the marker have checkpoints)
    others = sorted(p.name for p in workdir.iterdir() if p.name != ".lock")
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise UserError(
            f"{workdir} holds files that are not a digitjax run ({shown}); nothing was changed there. "
            f"Train into a new or empty --workdir."
        )


class FileLock:
    """An exclusive lock on a local or network workdir; the OS drops it if the process dies."""

    note = None

    def __init__(self, workdir: epath.Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._handle = open(workdir / ".lock", "a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.seek(0)
            owner = self._handle.read().strip() or "another process"
            self._handle.close()
            raise UserError(
                f"{workdir} is in use by {owner}, which is training there; nothing was changed. "
                f"Wait for it to finish (or stop it), or train into another --workdir."
            ) from None

    def claim(self) -> None:
        """Writes the owner in, for a run refused by this lock to name."""
        self._handle.truncate(0)
        self._handle.write(f"process {os.getpid()} on {os.uname().nodename}\n")
        self._handle.flush()

    def check(self) -> None:
        """An OS lock is not lost while the process lives."""

    def close(self) -> None:
        self._handle.close()


def lock(workdir: epath.Path) -> FileLock | objectstore.LeaseLock:
    """The workdir's lock for the life of the run: `check` before writing, `close` to unlock."""
    return objectstore.LeaseLock(workdir) if objectstore.is_remote(workdir) else FileLock(workdir)


def claim(lock: FileLock | objectstore.LeaseLock) -> None:
    """Marks the locked workdir, once known to be this run's, as a folder digitjax may write in."""
    lock.claim()
    (lock.workdir / MARKER).write_text("")


def check_identity(workdir: epath.Path, step: int, config: ml_collections.ConfigDict) -> None:
    """Refuses a workdir whose checkpoint at `step` belongs to another run (STRUCTURAL_FIELDS)."""
    step_dir = workdir / "checkpoints" / str(step)
    saved = ml_collections.ConfigDict(json.loads(orbax_internals.json_item_file(step_dir, "config").read_text()))
    there, here = _identity(saved), _identity(config)
    diffs = [f"{k}={there[k]!r} there, {here[k]!r} here" for k in here if there[k] != here[k]]
    if diffs:
        raise UserError(
            f"{workdir} holds a checkpoint of another run ({'; '.join(diffs)}). "
            f"Nothing was changed there. Train into a new --workdir, or delete "
            f"{workdir} to start that run over."
        )


def _identity(config: ml_collections.ConfigDict) -> dict:
    """What makes a run this run: the model's family and sizes (older configs name an alias), its
    dataset, and STRUCTURAL_FIELDS."""
    spec = model_lib.spec_of(config)
    fields = {k: config.get(k) for k in STRUCTURAL_FIELDS}
    return {"model": spec.family, "model_kwargs": spec.kwargs, "dataset": data.dataset_of(config), **fields}


def is_out_of_space(e: BaseException) -> bool:
    """ENOSPC, raised as OSError by Python or as a message by TensorStore and Orbax."""
    return (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e)


def out_of_space_error(workdir: epath.Path, step: int | None = None) -> UserError:
    steps = sorted(integrity.committed_steps(workdir / "checkpoints"))
    kept = (
        f"the checkpoints saved before (steps {', '.join(map(str, steps))}) are intact"
        if steps
        else "no checkpoint had been saved yet"
    )
    doing, lost = (f"saving step {step}", "that step was not saved; ") if step is not None else ("writing", "")
    return UserError(
        f"No space left on the device while {doing} in {workdir}; {lost}{kept}. "
        f"Free some space, then run the same command to resume."
    )


@contextlib.contextmanager
def out_of_space_as_user_error(workdir: epath.Path):
    """Metrics, events or a checkpoint, all in the workdir: a full disk becomes a message saying what to do."""
    try:
        yield
    except Exception as e:
        if is_out_of_space(e):
            raise out_of_space_error(workdir) from None
        raise
