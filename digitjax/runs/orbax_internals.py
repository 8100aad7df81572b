"""Orbax's step folders through its public helpers (`orbax.checkpoint.path.step`), and the two
things digitjax relies on that have no public form, each checked by `tests/test_orbax_internals.py`
against the installed Orbax so that a release that changes one fails there, by name:
  - a JSON item (`ocp.args.JsonSave`) is the file `<step>/<item>/metadata`, read directly where
    Orbax's reader would wait for the other processes;
  - a failed save is logged by Orbax's own modules (their paths contain "orbax") and its asyncio
    tasks are named for Orbax.

Uncommitted steps are removed by digitjax (`pending_dirs`), not by `CheckpointManagerOptions`'
`cleanup_tmp_directories`: Orbax would clean up when the manager opens, before digitjax has taken the
workdir's lock, and so could delete a save another live run is writing.
"""

from __future__ import annotations

import logging
import sys

from etils import epath
from orbax.checkpoint.path import step as step_paths


def is_committed(step_dir: epath.Path) -> bool:
    """A finished step: renamed from its temporary folder on a disk, its commit file written on gs://."""
    step_dir = epath.Path(step_dir)
    return step_dir.name.isdigit() and step_dir.is_dir() and step_paths.is_path_finalized(step_dir)


def pending_dirs(root: epath.Path) -> list[epath.Path]:
    """Steps Orbax started writing under `root` and never committed."""
    return sorted(t.get() for t in step_paths.all_temporary_paths(root))


def pending_dir(root: epath.Path, step: int) -> epath.Path | None:
    """Where Orbax is writing `step` before committing it, if it has started."""
    found = [t.get() for t in step_paths.all_temporary_paths(root) if t.get_final().name == str(step)]
    return found[0] if found else None


def json_item_file(step_dir: epath.Path, item: str) -> epath.Path:
    """The file of a JSON item, read directly where Orbax's reader would wait for other processes."""
    return step_dir / item / "metadata"


def quiet_failed_saves() -> None:
    """Leaves a failed save to the exception that the next save or close raises.

    Orbax also logs the failure from each of its writer threads, with tracebacks, and its event
    loops complain once closed: a screen of noise above the one message that says what to do.
    """

    class DropOrbaxErrors(logging.Filter):
        def filter(self, record):
            return "orbax" not in record.pathname

    class DropOrbaxTasks(logging.Filter):  # asyncio's "Task exception was never retrieved", at collection
        def filter(self, record):
            return not ("never retrieved" in record.getMessage() and "orbax" in record.getMessage())

    logging.getLogger("absl").addFilter(DropOrbaxErrors())
    logging.getLogger("asyncio").addFilter(DropOrbaxTasks())
    default_hook = sys.unraisablehook

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)):
            default_hook(unraisable)

    sys.unraisablehook = hook
