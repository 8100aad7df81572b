"""A run's workdir: the lock that keeps it to one run at a time, the run's identity, and running out of space in it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from pathlib import Path

import ml_collections

from digitjax import integrity, orbax_internals
from digitjax.errors import UserError

# Fields that give a checkpoint its shape or its run its identity: a workdir whose
# checkpoint differs in one of them belongs to another run and is never resumed or touched.
STRUCTURAL_FIELDS = ("model", "optimizer", "batch_size", "seed", "validation_size")


MARKER = ".digitjax-run"  # written into every workdir a run claims: a folder digitjax may write in


def check_ours(workdir: Path) -> None:
    """Refuses a folder that holds files but is not a digitjax run: digitjax writes only where it created."""
    if not workdir.is_dir() or (workdir / MARKER).exists() or (workdir / "checkpoints").is_dir():
        return  # new, or a run (runs written before the marker have checkpoints)
    others = sorted(p.name for p in workdir.iterdir() if p.name != ".lock")
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise UserError(
            f"{workdir} holds files that are not a digitjax run ({shown}); nothing was changed there. "
            f"Train into a new or empty --workdir."
        )


def lock(workdir: Path):
    """An exclusive lock on the workdir for the life of the run; the OS drops it if the process dies.

    Returns the open lock file: closing it unlocks. `claim` writes the owner in once the workdir
    is known to be this run's."""
    workdir.mkdir(parents=True, exist_ok=True)
    handle = open(workdir / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise UserError(
            f"{workdir} is in use by {owner}, which is training there; nothing was changed. "
            f"Wait for it to finish (or stop it), or train into another --workdir."
        )
    return handle


def claim(handle) -> None:
    """Marks the locked workdir as this process's run."""
    handle.truncate(0)
    handle.write(f"process {os.getpid()}\n")
    handle.flush()
    (Path(handle.name).parent / MARKER).touch()


def check_identity(workdir: Path, step: int, config: ml_collections.ConfigDict) -> None:
    """Refuses a workdir whose checkpoint at `step` belongs to another run (STRUCTURAL_FIELDS)."""
    step_dir = workdir / "checkpoints" / str(step)
    saved = json.loads(orbax_internals.json_item_file(step_dir, "config").read_text())
    diffs = [f"{k}={saved.get(k)!r} there, {config[k]!r} here" for k in STRUCTURAL_FIELDS if saved.get(k) != config[k]]
    if diffs:
        raise UserError(
            f"{workdir} holds a checkpoint of another run ({'; '.join(diffs)}). "
            f"Nothing was changed there. Train into a new --workdir, or delete "
            f"{workdir} to start that run over."
        )


def is_out_of_space(e: BaseException) -> bool:
    """ENOSPC, raised as OSError by Python or as a message by TensorStore and Orbax."""
    return (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e)


def out_of_space_error(workdir: Path, step: int | None = None) -> UserError:
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
def out_of_space_as_user_error(workdir: Path):
    """Metrics, events or a checkpoint, all in the workdir: a full disk becomes a message saying what to do."""
    try:
        yield
    except Exception as e:
        if is_out_of_space(e):
            raise out_of_space_error(workdir) from None
        raise
