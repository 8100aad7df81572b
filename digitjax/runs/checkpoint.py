"""Orbax checkpoints of a run: model, optimizer, RNG, config and metadata, per step.

Every step directory holds the items
  model   pure dict of the model's arrays (params and batch statistics)
  ema     the same for the running average of the weights, in runs whose config keeps one
  opt     pure dict of the optimizer's arrays
  rng     the run's base PRNG key data
  config  the run's config, JSON
  meta    step, epoch, accuracies, versions and the device kind that wrote it, JSON
so that a model restores from `model` (or `ema`) and `config` alone, on any device kind.

Each step also holds a manifest of its files, and damaged steps are passed over by one policy
(`digitjax/runs/integrity.py`); the workdir's lock and the run's identity are `digitjax/runs/workdir.py`'s.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from orbax.checkpoint import checkpoint_managers as policies

from digitjax import model as model_lib
from digitjax.errors import UserError
from digitjax.runs import integrity, objectstore, orbax_internals, parallel
from digitjax.runs import workdir as workdir_lib

if TYPE_CHECKING:
    from digitjax.state import TrainState

BEST_METRIC = "val_accuracy"
ITEMS = ("model", "ema", "opt", "rng", "config", "meta")
_TRAIN_FIX = "Nothing was changed there. Train into a new --workdir, or move {workdir} away to start that run over."
_INFERENCE_FIX = "Train the run again, or restore its checkpoints from a copy."


def _abstract(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
    """Shapes, dtypes and a target sharding for Orbax to restore into."""

    def leaf(x):
        target = sharding or getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=target)

    return jax.tree.map(leaf, tree)


def _manager(
    workdir: epath.Path, keep_latest: int = 2, read_only: bool = False, on_written=None
) -> ocp.CheckpointManager:
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
    root = workdir if objectstore.is_remote(workdir) else workdir.resolve()
    return ocp.CheckpointManager(root / "checkpoints", options=options)


def _read_json_items(mngr: ocp.CheckpointManager, step: int) -> tuple[dict, dict]:
    restored = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    return restored["config"], restored["meta"]


def _modules(state: TrainState) -> dict[str, nnx.Module]:
    """The state's modules by the name of the item each is saved as."""
    modules = {"model": state.model, "opt": state.optimizer}
    return modules | ({"ema": state.ema} if state.ema is not None else {})


class RunCheckpoints:
    """The checkpoints of one training run in `workdir/checkpoints`, which it alone may write.

    `notes` says what was found wrong (damaged steps moved aside) for the trainer to print.
    """

    def __init__(self, workdir: str | epath.Path, config: ml_collections.ConfigDict):
        self.workdir = epath.Path(workdir)
        self.root = self.workdir / "checkpoints"
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
        workdir_lib.check_ours(self.workdir)  # before the lock file: nothing is written in a foreign folder
        self._lock = workdir_lib.lock(self.workdir)
        found = integrity.committed_steps(self.root)
        intact, damaged = None, {}
        try:
            if found:
                fix = _TRAIN_FIX.format(workdir=self.workdir)
                intact, damaged = integrity.usable_step(self.root, found, fix)
                workdir_lib.check_identity(self.workdir, intact, self.config)
        except UserError:
            self._lock.close()
            raise
        for step, why in damaged.items():
            moved = integrity.move_aside(self.root / str(step), self.workdir / "damaged")
            self.notes.append(
                f"Checkpoint step {step} is damaged: {why}. Moved it to {moved}; resuming from step {intact}."
            )
        workdir_lib.claim(self._lock)  # only now that the workdir is known to be this run's
        if self._lock.note:
            self.notes.append(self._lock.note)
        for pending in orbax_internals.pending_dirs(self.root):
            pending.rmtree()  # a save of this run that was interrupted; never committed

    def _seal(self) -> None:
        """Orbax's post-finalization callback: the manifest goes in before the step is committed."""
        pending = orbax_internals.pending_dir(self.root, self._saving)
        integrity.write_manifest(pending, self._saving, ITEMS)

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def has(self, step: int) -> bool:
        return step in self.mngr.all_steps()

    def save(self, step: int, state: TrainState, rng: jax.Array, meta: dict) -> None:
        """Saves asynchronously; Orbax commits the step when done (a rename on a disk, a commit file on a bucket)."""
        self._raise_failed_save(self.mngr.wait_until_finished)  # the previous save, before a new one starts
        if self._lock is not None:
            self._lock.check()  # a run that lost its workdir's lease saves nothing more
        self._saving = step
        metrics = {BEST_METRIC: meta[BEST_METRIC]} if meta.get(BEST_METRIC) is not None else None
        items = {name: ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(m))) for name, m in _modules(state).items()}
        args = ocp.args.Composite(
            **items,
            rng=ocp.args.StandardSave({"key_data": jax.random.key_data(rng)}),
            config=ocp.args.JsonSave(self.config.to_dict()),
            meta=ocp.args.JsonSave({**meta, "step": step}),
        )
        self._raise_failed_save(functools.partial(self.mngr.save, step, args=args, metrics=metrics))

    def restore(self, step: int, state: TrainState, rng: jax.Array) -> tuple[jax.Array, dict]:
        """Restores `step` into the state in place; returns the run's RNG key and the step's meta."""
        modules = _modules(state)
        states = {name: nnx.state(m) for name, m in modules.items()}
        items = {name: ocp.args.StandardRestore(_abstract(nnx.to_pure_dict(s))) for name, s in states.items()}
        key_data = jax.random.key_data(rng)
        args = ocp.args.Composite(
            **items, rng=ocp.args.StandardRestore({"key_data": _abstract(key_data)}), meta=ocp.args.JsonRestore()
        )
        restored = self.mngr.restore(step, args=args)
        for name, module in modules.items():
            nnx.replace_by_pure_dict(states[name], restored[name])
            nnx.update(module, states[name])
        key = jax.random.wrap_key_data(restored["rng"]["key_data"], impl=jax.random.key_impl(rng))
        return key, restored["meta"]

    def _raise_failed_save(self, call) -> None:
        """Runs `call`; a save that failed for want of space becomes a UserError, its partial files removed."""
        try:
            call()
        except Exception as e:
            if not workdir_lib.is_out_of_space(e):
                raise
            if (partial := orbax_internals.pending_dir(self.root, self._saving)) is not None:
                partial.rmtree(missing_ok=True)
            raise workdir_lib.out_of_space_error(self.workdir, self._saving) from None

    def close(self) -> None:
        try:
            self._raise_failed_save(self.mngr.wait_until_finished)
        finally:
            self.mngr.close()
            if self._lock is not None:
                self._lock.close()


@dataclasses.dataclass
class Restored:
    model: nnx.Module
    config: ml_collections.ConfigDict
    step: int
    meta: dict
    notes: list[str] = dataclasses.field(default_factory=list)  # damaged steps passed over, to tell the user


def steps(workdir: str | epath.Path) -> tuple[list[int], int | None]:
    """All checkpointed steps of a workdir and the best one (None without validation)."""
    mngr = open_read_only(epath.Path(workdir))
    try:
        return list(mngr.all_steps()), mngr.best_step()
    finally:
        mngr.close()


def open_read_only(workdir: epath.Path) -> ocp.CheckpointManager:
    """Orbax's manager of a trained run's checkpoints, for reading; a UserError where there are none."""
    objectstore.check_supported(workdir)
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


def _inference_step(workdir: epath.Path, mngr: ocp.CheckpointManager, step: int | None) -> tuple[int, list[str]]:
    """The step to restore and notes on damaged steps passed over: `step` itself when given, else
    the best by validation (or the latest), else the newest intact step."""
    root = workdir / "checkpoints"
    if step is not None:
        if step not in mngr.all_steps():
            raise UserError(f"{workdir} has no checkpoint at step {step}; it has steps {list(mngr.all_steps())}.")
        if why := integrity.damage(root / str(step)):
            intact = [s for s in mngr.all_steps() if integrity.damage(root / str(s)) is None]
            raise UserError(
                f"Checkpoint step {step} in {workdir} is damaged: {why}. Intact steps: {intact or 'none'}; "
                f"pass one of them as the step."
            )
        return step, []
    best = mngr.best_step()
    wanted, kind = (mngr.latest_step(), "latest") if best is None else (best, "best by validation")
    others = [s for s in integrity.committed_steps(root) if s != wanted]
    step, damaged = integrity.usable_step(root, [wanted, *others], _INFERENCE_FIX)
    if not damaged:
        return step, []
    return step, [
        f"{workdir}: not using damaged checkpoints ({integrity.describe(damaged)}); using step {step}, "
        f"the newest intact one, instead of the {kind}."
    ]


def load_for_inference(
    workdir: str | epath.Path, step: int | None = None, device: jax.Device | None = None
) -> Restored:
    """Restores only the model of a checkpoint onto `device` (default: the first local one).

    `step` None picks the best step by validation accuracy when the run tracked one, else
    the latest. Works whatever device kind wrote the checkpoint: the target carries the
    new sharding, so nothing of the writer's topology is needed.
    """
    workdir = epath.Path(workdir)
    mngr = open_read_only(workdir)
    try:
        step, notes = _inference_step(workdir, mngr, step)
        config_dict, meta = _read_json_items(mngr, step)
        config = ml_collections.ConfigDict(config_dict)
        # conv="auto": the route is this machine's (the parameters are the same on every route).
        create = functools.partial(model_lib.create, model_lib.spec_of(config), seed=0, conv="auto")
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
