"""Orbax checkpoints of a run: model, optimizer, RNG, config and metadata, per step.

Every step directory holds the items
  model   pure dict of the model's arrays (params and batch statistics)
  ema     the same for the running average of the weights, in runs whose config keeps one
  opt     pure dict of the optimizer's arrays
  rng     the run's base PRNG key data
  config  the run's config, JSON
  meta    step, epoch, accuracies, versions and the device kind that wrote it, JSON
so that a model restores from `model` (or `ema`) and `config` alone, on any device kind.

Each step also holds `digitjax_manifest.json`, the size and sha256 of every file of its items,
written into Orbax's temporary directory before the rename that commits the step. A step whose
files no longer match it (truncated, deleted, changed) is damaged: training moves it aside and
resumes from the newest intact step, inference skips it, and both say so.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as policies

from digitjax import model as model_lib
from digitjax import parallel
from digitjax.errors import UserError

# Fields that give a checkpoint its shape or its run its identity: a workdir whose
# checkpoint differs in one of them belongs to another run and is never resumed or touched.
STRUCTURAL_FIELDS = ("model", "optimizer", "batch_size", "seed", "validation_size")
BEST_METRIC = "val_accuracy"
MANIFEST = "digitjax_manifest.json"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's name for a step still being written
ITEMS = ("model", "ema", "opt", "rng", "config", "meta")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _file_digests(step_dir: Path) -> dict[str, list]:
    """relative path -> [size, sha256] for every file of the step's items."""
    digests = {}
    for item in ITEMS:
        for path in sorted((step_dir / item).rglob("*")):
            if path.is_file():
                digests[str(path.relative_to(step_dir))] = [path.stat().st_size, _sha256(path)]
    return digests


def damage(step_dir: Path) -> str | None:
    """Why the step's files do not match its manifest, or None when they all do."""
    try:
        manifest = json.loads((step_dir / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"it has no {MANIFEST} (an interrupted copy, or written by an older digitjax)"
    except (ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is unreadable"
    for name, (size, sha256) in manifest.items():
        path = step_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if (actual := path.stat().st_size) != size:
            return f"{name} has {actual:,} bytes instead of {size:,} (truncated?)"
        if _sha256(path) != sha256:
            return f"{name} does not hold what was written (sha256 differs)"
    return None


def _step_dirs(root: Path) -> list[int]:
    """Committed step numbers under `root`, newest first."""
    return sorted((int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir()), reverse=True)


def _newest_intact(root: Path, steps: list[int]) -> tuple[int | None, dict[int, str]]:
    """The first intact step of `steps` (newest first) and why each one before it is damaged."""
    damaged = {}
    for step in steps:
        why = damage(root / str(step))
        if why is None:
            return step, damaged
        damaged[step] = why
    return None, damaged


def is_out_of_space(e: BaseException) -> bool:
    """ENOSPC, raised as OSError by Python or as a message by TensorStore and Orbax."""
    return (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e)


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


def out_of_space_error(workdir: Path, step: int | None = None) -> UserError:
    root = workdir / "checkpoints"
    steps = sorted(_step_dirs(root)) if root.is_dir() else []
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


def _abstract(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
    """Shapes, dtypes and a target sharding for Orbax to restore into."""

    def leaf(x):
        target = sharding or getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=target)

    return jax.tree.map(leaf, tree)


def _manager(workdir: Path, keep_latest: int = 2, read_only: bool = False, on_written=None) -> ocp.CheckpointManager:
    policy = policies.AnyPreservationPolicy(
        [
            policies.LatestN(n=keep_latest),
            policies.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1, keep_checkpoints_without_metrics=False),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        best_fn=lambda m: m[BEST_METRIC],  # for best_step(); None while no step has metrics
        preservation_policy=policy,
        create=not read_only,
        read_only=read_only,
        async_options=ocp.AsyncOptions(post_finalization_callback=on_written) if on_written else None,
    )
    return ocp.CheckpointManager(workdir.resolve() / "checkpoints", options=options)


def _read_json_items(mngr: ocp.CheckpointManager, step: int) -> tuple[dict, dict]:
    restored = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    return restored["config"], restored["meta"]


class RunCheckpoints:
    """The checkpoints of one training run in `workdir/checkpoints`, which it alone may write.

    `notes` says what was found wrong (damaged steps moved aside) for the trainer to print.
    """

    def __init__(self, workdir: str | Path, config: ml_collections.ConfigDict):
        self.workdir = Path(workdir)
        self.config = config
        self.notes: list[str] = []
        self._saving: int | None = None
        self._lock = None
        if parallel.is_main():  # in a multi-host run, process 0 keeps the books; the others wait
            self._take_over()
        parallel.sync("digitjax: checkpoints checked")
        self.mngr = _manager(self.workdir, keep_latest=config.keep_latest, on_written=self._seal)

    def _take_over(self) -> None:
        """Locks the workdir, checks it holds this run, moves damaged steps aside, drops unfinished ones."""
        self._lock = _lock(self.workdir)
        root = self.workdir / "checkpoints"
        found = _step_dirs(root) if root.is_dir() else []
        intact, damaged = _newest_intact(root, found)
        try:
            if found and intact is None:
                raise UserError(
                    f"Every checkpoint in {root} is damaged ({_describe(damaged)}). Nothing was changed there. "
                    f"Train into a new --workdir, or move {self.workdir} away to start that run over."
                )
            if intact is not None:
                self._check_identity(intact)
        except UserError:
            self._lock.close()
            raise
        for step, why in damaged.items():
            moved = _move_aside(root / str(step), self.workdir / "damaged")
            self.notes.append(
                f"Checkpoint step {step} is damaged: {why}. Moved it to {moved}; resuming from step {intact}."
            )
        self._lock.truncate(0)  # only now that the workdir is known to be this run's
        self._lock.write(f"process {os.getpid()}\n")
        self._lock.flush()
        for tmp in root.glob(f"*{TMP_SUFFIX}*") if root.is_dir() else ():
            shutil.rmtree(tmp)  # a save of this run that was interrupted; never committed

    def _check_identity(self, step: int) -> None:
        # The JSON item's file itself: Orbax's reader would wait for the other processes.
        saved = json.loads((self.workdir / "checkpoints" / str(step) / "config" / "metadata").read_text())
        diffs = [
            f"{k}={saved.get(k)!r} there, {self.config[k]!r} here"
            for k in STRUCTURAL_FIELDS
            if saved.get(k) != self.config[k]
        ]
        if diffs:
            raise UserError(
                f"{self.workdir} holds a checkpoint of another run ({'; '.join(diffs)}). "
                f"Nothing was changed there. Train into a new --workdir, or delete "
                f"{self.workdir} to start that run over."
            )

    def _seal(self) -> None:
        """Orbax's post-finalization callback: the manifest goes in before the step is committed."""
        tmp = self.workdir / "checkpoints" / f"{self._saving}{TMP_SUFFIX}"
        body = json.dumps({"step": self._saving, "files": _file_digests(tmp)})
        (tmp / f"{MANIFEST}.partial").write_text(body)
        os.replace(tmp / f"{MANIFEST}.partial", tmp / MANIFEST)

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def has(self, step: int) -> bool:
        return step in self.mngr.all_steps()

    def save(
        self,
        step: int,
        model: nnx.Module,
        optimizer: nnx.Optimizer,
        rng: jax.Array,
        meta: dict,
        ema: nnx.Module | None = None,
    ) -> None:
        """Saves asynchronously; orbax writes to a temporary directory and renames it when done."""
        self._raise_failed_save(self.mngr.wait_until_finished)  # the previous save, before a new one starts
        self._saving = step
        metrics = {BEST_METRIC: meta[BEST_METRIC]} if meta.get(BEST_METRIC) is not None else None
        extra = {"ema": ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(ema)))} if ema is not None else {}
        save = functools.partial(
            self.mngr.save,
            step,
            args=ocp.args.Composite(
                **extra,
                model=ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(model))),
                opt=ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(optimizer))),
                rng=ocp.args.StandardSave({"key_data": jax.random.key_data(rng)}),
                config=ocp.args.JsonSave(self.config.to_dict()),
                meta=ocp.args.JsonSave({**meta, "step": step}),
            ),
            metrics=metrics,
        )
        self._raise_failed_save(save)

    def restore(
        self, step: int, model: nnx.Module, optimizer: nnx.Optimizer, rng: jax.Array, ema: nnx.Module | None = None
    ) -> tuple[jax.Array, dict]:
        """Restores `step` into model, optimizer (and ema) in place; returns the RNG key and meta."""
        model_state, opt_state = nnx.state(model), nnx.state(optimizer)
        key_data = jax.random.key_data(rng)
        ema_state = nnx.state(ema) if ema is not None else None
        extra = {"ema": ocp.args.StandardRestore(_abstract(nnx.to_pure_dict(ema_state)))} if ema is not None else {}
        restored = self.mngr.restore(
            step,
            args=ocp.args.Composite(
                **extra,
                model=ocp.args.StandardRestore(_abstract(nnx.to_pure_dict(model_state))),
                opt=ocp.args.StandardRestore(_abstract(nnx.to_pure_dict(opt_state))),
                rng=ocp.args.StandardRestore({"key_data": _abstract(key_data)}),
                meta=ocp.args.JsonRestore(),
            ),
        )
        nnx.replace_by_pure_dict(model_state, restored["model"])
        nnx.replace_by_pure_dict(opt_state, restored["opt"])
        nnx.update(model, model_state)
        nnx.update(optimizer, opt_state)
        if ema is not None:
            nnx.replace_by_pure_dict(ema_state, restored["ema"])
            nnx.update(ema, ema_state)
        key = jax.random.wrap_key_data(restored["rng"]["key_data"], impl=jax.random.key_impl(rng))
        return key, restored["meta"]

    def _raise_failed_save(self, call) -> None:
        """Runs `call`; a save that failed for want of space becomes a UserError, its partial files removed."""
        try:
            call()
        except Exception as e:
            if not is_out_of_space(e):
                raise
            shutil.rmtree(self.workdir / "checkpoints" / f"{self._saving}{TMP_SUFFIX}", ignore_errors=True)
            raise out_of_space_error(self.workdir, self._saving) from None

    def close(self) -> None:
        try:
            self._raise_failed_save(self.mngr.wait_until_finished)
        finally:
            self.mngr.close()
            if self._lock is not None:
                self._lock.close()


def _lock(workdir: Path):
    """An exclusive lock on the workdir for the life of the run; the OS drops it if the process dies."""
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


def _move_aside(step_dir: Path, into: Path) -> Path:
    """Moves a damaged step out of Orbax's sight, keeping its files for a person to look at."""
    into.mkdir(exist_ok=True)
    target, n = into / step_dir.name, 1
    while target.exists():
        n += 1
        target = into / f"{step_dir.name}-{n}"
    step_dir.rename(target)
    return target


def _describe(damaged: dict[int, str]) -> str:
    return "; ".join(f"step {step}: {why}" for step, why in damaged.items())


@dataclasses.dataclass
class Restored:
    model: nnx.Module
    config: ml_collections.ConfigDict
    step: int
    meta: dict
    notes: list[str] = dataclasses.field(default_factory=list)  # damaged steps passed over, to tell the user


def steps(workdir: str | Path) -> tuple[list[int], int | None]:
    """All checkpointed steps of a workdir and the best one (None without validation)."""
    mngr = _open_read_only(Path(workdir))
    try:
        return list(mngr.all_steps()), mngr.best_step()
    finally:
        mngr.close()


def _open_read_only(workdir: Path) -> ocp.CheckpointManager:
    if not (workdir / "checkpoints").is_dir():
        raise UserError(
            f"No checkpoints in {workdir}: train one first with "
            f"`python -m digitjax.train --workdir {workdir}`, or pass the --workdir of a trained run."
        )
    mngr = _manager(workdir, read_only=True)
    if mngr.latest_step() is None:
        mngr.close()
        raise UserError(f"{workdir}/checkpoints holds no finished checkpoint yet; train or wait for the first save.")
    return mngr


def load_for_inference(workdir: str | Path, step: int | None = None, device: jax.Device | None = None) -> Restored:
    """Restores only the model of a checkpoint onto `device` (default: the first local one).

    `step` None picks the best step by validation accuracy when the run tracked one, else
    the latest. Works whatever device kind wrote the checkpoint: the target carries the
    new sharding, so nothing of the writer's topology is needed.
    """
    workdir = Path(workdir)
    mngr = _open_read_only(workdir)
    root = workdir / "checkpoints"
    notes = []
    try:
        if step is None:
            best = mngr.best_step()
            step, kind = (mngr.latest_step(), "latest") if best is None else (best, "best by validation")
            why = damage(root / str(step))
            if why is not None:
                damaged = {step: why}
                step, more = _newest_intact(root, [s for s in _step_dirs(root) if s != step])
                damaged |= more
                if step is None:
                    raise UserError(
                        f"Every checkpoint in {root} is damaged ({_describe(damaged)}). Train the run again, "
                        f"or restore its checkpoints from a copy."
                    )
                notes.append(
                    f"{workdir}: not using damaged checkpoints ({_describe(damaged)}); using step {step}, "
                    f"the newest intact one, instead of the {kind}."
                )
        elif step not in mngr.all_steps():
            raise UserError(f"{workdir} has no checkpoint at step {step}; it has steps {list(mngr.all_steps())}.")
        elif why := damage(root / str(step)):
            intact = [s for s in mngr.all_steps() if damage(root / str(s)) is None]
            raise UserError(
                f"Checkpoint step {step} in {workdir} is damaged: {why}. Intact steps: {intact or 'none'}; "
                f"pass one of them as the step."
            )
        config_dict, meta = _read_json_items(mngr, step)
        config = ml_collections.ConfigDict(config_dict)
        # conv="auto": the route is this machine's (the parameters are the same on every route).
        create = functools.partial(model_lib.create, config.model, seed=0, conv="auto")
        graphdef, abstract_state = nnx.split(nnx.eval_shape(create))
        sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
        target = _abstract(nnx.to_pure_dict(abstract_state), sharding)
        # Runs that average their weights evaluate and serve the average.
        item = "ema" if config.get("ema_decay") else "model"
        restored = mngr.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)}))
    finally:
        mngr.close()
    nnx.replace_by_pure_dict(abstract_state, restored[item])
    model = nnx.merge(graphdef, abstract_state)
    model.eval()
    return Restored(model, config, step, meta, notes)
