"""How digitjax finds Orbax's steps (its public step-path helpers) and what it relies on beyond Orbax's
public API (digitjax/runs/orbax_internals.py), checked against the installed Orbax: a release that
changes one of these fails here, by name."""

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
        seen["dir"] = orbax_internals.pending_dir(tmp_path, 3)
        seen["pending"] = seen["dir"].is_dir() and seen["dir"].name != "3"
        seen["committed"] = (tmp_path / "3").exists()
        seen["found"] = orbax_internals.pending_dirs(tmp_path)
        seen["items"] = sorted(p.name for p in orbax_internals.pending_dir(tmp_path, 3).iterdir())

    _save(tmp_path, 3, on_written)
    assert seen["pending"] and not seen["committed"]
    assert seen["found"] == [seen["dir"]]
    assert {"model", "config"} <= set(seen["items"]), "the items are written when the callback runs"
    assert orbax_internals.is_committed(tmp_path / "3") and orbax_internals.pending_dirs(tmp_path) == []
    assert orbax_internals.pending_dir(tmp_path, 3) is None


def test_on_a_bucket_a_step_is_written_in_place_and_committed_by_a_file_after_the_callback(gcs):
    from etils import epath

    root, seen = epath.Path(f"{gcs.bucket}/orbax-internals"), {}

    def on_written():
        seen["dir"] = orbax_internals.pending_dir(root, 3)
        seen["items"] = sorted(p.name for p in seen["dir"].iterdir())
        seen["committed"] = orbax_internals.is_committed(root / "3")
        seen["found"] = orbax_internals.pending_dirs(root)

    _save(root, 3, on_written)
    assert {"model", "config"} <= set(seen["items"]) and not seen["committed"]
    assert seen["found"] == [seen["dir"]] == [root / "3"]
    assert orbax_internals.is_committed(root / "3") and orbax_internals.pending_dirs(root) == []


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
