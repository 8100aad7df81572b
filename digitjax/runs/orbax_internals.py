"""What digitjax relies on of Orbax beyond its public API, all in one place.

`tests/test_orbax_internals.py` checks each of these against the installed Orbax, so an Orbax
release that changes one fails there, by name, instead of somewhere in a run:
  - on a disk, a step is written into `<step>.orbax-checkpoint-tmp*` beside its final directory
    and renamed when committed; on gs:// it is written in place and committed by writing
    `commit_success.txt` into it; `post_finalization_callback` runs before either commit;
  - a JSON item (`ocp.args.JsonSave`) is the file `<step>/<item>/metadata`;
  - a failed save is logged by Orbax's own modules (their paths contain "orbax") and its asyncio
    tasks are named for Orbax.
"""

from __future__ import annotations

import logging
import sys

from etils import epath

from digitjax.runs import objectstore

TMP_SUFFIX = ".orbax-checkpoint-tmp"
COMMIT_FILE = "commit_success.txt"


def pending_dir(root: epath.Path, step: int) -> epath.Path:
    """Where Orbax writes `step` before committing it."""
    return root / str(step) if objectstore.is_remote(root) else root / f"{step}{TMP_SUFFIX}"


def is_committed(step_dir: epath.Path) -> bool:
    step_dir = epath.Path(step_dir)
    if not step_dir.name.isdigit():
        return False
    if objectstore.is_remote(step_dir):
        return (step_dir / COMMIT_FILE).exists()
    return step_dir.is_dir()


def pending_dirs(root: epath.Path) -> list[epath.Path]:
    """Steps Orbax started writing under `root` and never committed."""
    root = epath.Path(root)
    if not root.is_dir():
        return []
    if objectstore.is_remote(root):
        return sorted(p for p in root.iterdir() if p.name.isdigit() and not is_committed(p))
    return sorted(root.glob(f"*{TMP_SUFFIX}*"))


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
