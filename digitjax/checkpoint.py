"""Orbax checkpoints of a run: model, optimizer, RNG, config and metadata, per step.

Every step directory holds the items
  model   pure dict of the model's arrays (params and batch statistics)
  ema     the same for the running average of the weights, in runs whose config keeps one
  opt     pure dict of the optimizer's arrays
  rng     the run's base PRNG key data
  config  the run's config, JSON
  meta    step, epoch, accuracies, versions and the device kind that wrote it, JSON
so that a model restores from `model` (or `ema`) and `config` alone, on any device kind.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as policies

from digitjax import model as model_lib
from digitjax.errors import UserError

# Fields that give a checkpoint its shape or its run its identity: a workdir whose
# checkpoint differs in one of them belongs to another run and is never resumed or touched.
STRUCTURAL_FIELDS = ("model", "optimizer", "batch_size", "seed", "validation_size")
BEST_METRIC = "val_accuracy"


def _abstract(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
    """Shapes, dtypes and a target sharding for Orbax to restore into."""

    def leaf(x):
        target = sharding or getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=target)

    return jax.tree.map(leaf, tree)


def _manager(workdir: Path, keep_latest: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
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
    )
    return ocp.CheckpointManager(workdir.resolve() / "checkpoints", options=options)


def _read_json_items(mngr: ocp.CheckpointManager, step: int) -> tuple[dict, dict]:
    restored = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    return restored["config"], restored["meta"]


class RunCheckpoints:
    """The checkpoints of one training run in `workdir/checkpoints`."""

    def __init__(self, workdir: str | Path, config: ml_collections.ConfigDict):
        self.workdir = Path(workdir)
        self.config = config
        self.mngr = _manager(self.workdir, keep_latest=config.keep_latest)
        latest = self.mngr.latest_step()
        if latest is not None:
            saved, _ = _read_json_items(self.mngr, latest)
            diffs = [
                f"{k}={saved.get(k)!r} there, {config[k]!r} here"
                for k in STRUCTURAL_FIELDS
                if saved.get(k) != config[k]
            ]
            if diffs:
                self.mngr.close()
                raise UserError(
                    f"{self.workdir} holds a checkpoint of another run ({'; '.join(diffs)}). "
                    f"Nothing was changed there. Train into a new --workdir, or delete "
                    f"{self.workdir} to start that run over."
                )

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
        metrics = {BEST_METRIC: meta[BEST_METRIC]} if meta.get(BEST_METRIC) is not None else None
        extra = {"ema": ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(ema)))} if ema is not None else {}
        self.mngr.save(
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

    def close(self) -> None:
        self.mngr.wait_until_finished()
        self.mngr.close()


@dataclasses.dataclass
class Restored:
    model: nnx.Module
    config: ml_collections.ConfigDict
    step: int
    meta: dict


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
    try:
        if step is None:
            best = mngr.best_step()
            step = mngr.latest_step() if best is None else best
        elif step not in mngr.all_steps():
            raise UserError(f"{workdir} has no checkpoint at step {step}; it has steps {list(mngr.all_steps())}.")
        config_dict, meta = _read_json_items(mngr, step)
        config = ml_collections.ConfigDict(config_dict)
        graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: model_lib.create(config.model, seed=0)))
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
    return Restored(model, config, step, meta)
