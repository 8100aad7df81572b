"""What digitjax relies on of Orbax beyond its public API, all in one place.

`tests/test_orbax_internals.py` checks each of these against the installed Orbax, so an Orbax
release that changes one fails there, by name, instead of somewhere in a run:
  - a step is written into `<step>.orbax-checkpoint-tmp*` beside its final directory and renamed
    when committed, and `post_finalization_callback` runs before that rename;
  - a JSON item (`ocp.args.JsonSave`) is the file `<step>/<item>/metadata`;
  - a failed save is logged by Orbax's own modules (their paths contain "orbax") and its asyncio
    tasks are named for Orbax.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

TMP_SUFFIX = ".orbax-checkpoint-tmp"


def pending_dir(root: Path, step: int) -> Path:
    """Where Orbax writes `step` before committing it (by a rename to `root/<step>`)."""
    return root / f"{step}{TMP_SUFFIX}"


def pending_dirs(root: Path) -> list[Path]:
    """Steps Orbax started writing under `root` and never committed."""
    return sorted(root.glob(f"*{TMP_SUFFIX}*")) if root.is_dir() else []


def json_item_file(step_dir: Path, item: str) -> Path:
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
