"""What digitjax relies on of Orbax beyond its public API (digitjax/runs/orbax_internals.py), checked
against the installed Orbax: a release that changes one of these fails here, by name."""

import json
import logging
import sys

import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from digitjax.runs import orbax_internals


def _save(root, step, on_written):
    options = ocp.CheckpointManagerOptions(async_options=ocp.AsyncOptions(post_finalization_callback=on_written))
    mngr = ocp.CheckpointManager(root, options=options)
    args = ocp.args.Composite(model=ocp.args.StandardSave({"w": jnp.ones(3)}), config=ocp.args.JsonSave({"seed": 4}))
    try:
        mngr.save(step, args=args)
        mngr.wait_until_finished()
    finally:
        mngr.close()


def test_a_step_is_written_into_the_pending_dir_and_the_callback_runs_before_the_rename(tmp_path):
    seen = {}

    def on_written():
        seen["pending"] = orbax_internals.pending_dir(tmp_path, 3).is_dir()
        seen["committed"] = (tmp_path / "3").exists()
        seen["found"] = orbax_internals.pending_dirs(tmp_path)
        seen["items"] = sorted(p.name for p in orbax_internals.pending_dir(tmp_path, 3).iterdir())

    _save(tmp_path, 3, on_written)
    assert seen["pending"] and not seen["committed"]
    assert seen["found"] == [orbax_internals.pending_dir(tmp_path, 3)]
    assert {"model", "config"} <= set(seen["items"]), "the items are written when the callback runs"
    assert (tmp_path / "3").is_dir() and orbax_internals.pending_dirs(tmp_path) == []


def test_on_a_bucket_a_step_is_written_in_place_and_committed_by_a_file_after_the_callback(gcs):
    from etils import epath

    root, seen = epath.Path(f"{gcs.bucket}/orbax-internals"), {}

    def on_written():
        seen["items"] = sorted(p.name for p in orbax_internals.pending_dir(root, 3).iterdir())
        seen["committed"] = orbax_internals.is_committed(root / "3")
        seen["found"] = orbax_internals.pending_dirs(root)

    _save(root, 3, on_written)
    assert {"model", "config"} <= set(seen["items"]) and not seen["committed"]
    assert seen["found"] == [orbax_internals.pending_dir(root, 3)]
    assert (root / "3" / orbax_internals.COMMIT_FILE).exists() and orbax_internals.pending_dirs(root) == []


def test_a_json_item_is_one_file(tmp_path):
    _save(tmp_path, 1, None)
    assert json.loads(orbax_internals.json_item_file(tmp_path / "1", "config").read_text()) == {"seed": 4}


def test_a_failed_save_is_logged_by_orbax_modules_and_quieted(tmp_path):
    """`quiet_failed_saves` drops Orbax's log records by their module paths: they must hold 'orbax'."""
    absl = logging.getLogger("absl")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    absl.addHandler(handler)
    filters, hook = list(absl.filters), sys.unraisablehook

    def fail():
        raise OSError(28, "No space left on device")

    try:
        with pytest.raises(OSError, match="No space left"):
            _save(tmp_path / "loud", 2, fail)
        assert records and all("orbax" in r.pathname for r in records), [r.pathname for r in records]
        assert orbax_internals.pending_dirs(tmp_path / "loud"), "a failed step stays pending, never committed"
        records.clear()
        orbax_internals.quiet_failed_saves()
        with pytest.raises(OSError, match="No space left"):
            _save(tmp_path / "quiet", 2, fail)
        assert records == []
    finally:
        absl.removeHandler(handler)
        absl.filters[:] = filters
        sys.unraisablehook = hook
