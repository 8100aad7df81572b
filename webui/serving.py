"""The served runs: each restored with `load_for_inference` and its predict function compiled."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from digitjax import checkpoint, onednn
from digitjax import model as model_lib
from digitjax.errors import UserError

HOW_TO_TRAIN = (
    "Train one with `python -m digitjax.train` (writes checkpoints/default), or point DIGITJAX_WORKDIR "
    "at a run directory, then start the server again."
)


def make_predict(model: nnx.Module) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """uint8 images_Bx28x28 -> (probabilities_BxC, saliency_Bx28x28 in [0, 1]).

    Pure (the model's state is an argument), so concurrent requests cannot interfere.
    """
    graphdef, state = nnx.split(model)

    @jax.jit
    def predict(state, images_BxHxW):
        x_BxHxWx1 = model_lib.to_input(images_BxHxW)
        logits_BxC = nnx.merge(graphdef, state)(x_BxHxWx1)
        top_B = jnp.argmax(logits_BxC, -1)

        def top_logit(x):
            return jnp.take_along_axis(nnx.merge(graphdef, state)(x), top_B[:, None], 1).sum()

        # Input gradient of the winning logit: the pixels whose change would move the answer most.
        grad_BxHxW = jnp.abs(jax.grad(top_logit)(x_BxHxWx1))[..., 0]
        saliency = grad_BxHxW / jnp.maximum(grad_BxHxW.max(axis=(1, 2), keepdims=True), 1e-12)
        return jax.nn.softmax(logits_BxC), saliency

    def run(images_BxHxW: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, saliency = predict(state, images_BxHxW)
        return np.asarray(probs), np.asarray(saliency)

    return run


@dataclasses.dataclass
class Run:
    name: str
    workdir: Path
    step: int
    model_name: str
    test_accuracy: float | None
    trained_on: str | None
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    notes: list[str] = dataclasses.field(default_factory=list)  # damaged checkpoints passed over

    def describe(self) -> dict:
        return {
            "name": self.name,
            "step": self.step,
            "model": self.model_name,
            "test_accuracy": self.test_accuracy,
            "trained_on": self.trained_on,
            "notes": self.notes,
        }

    def timed_predict(self, image_28x28: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        start = time.perf_counter()
        probs, saliency = self.predict(image_28x28[None])
        return probs[0], saliency[0], (time.perf_counter() - start) * 1000


def _restore(name: str, workdir: Path) -> Run:
    restored = checkpoint.load_for_inference(workdir)
    run = Run(
        name=name,
        workdir=workdir,
        step=restored.step,
        model_name=restored.config.model,
        test_accuracy=restored.meta.get("test_accuracy"),
        trained_on=restored.meta.get("device_kind"),
        predict=make_predict(restored.model),
        notes=restored.notes,
    )
    for note in restored.notes:
        logging.getLogger("webui").warning(note)
    run.predict(np.zeros((1, 28, 28), np.uint8))  # compile now: requests only ever send one image
    return run


@dataclasses.dataclass
class Runs:
    runs: dict[str, Run]
    default: str | None
    problem: str | None  # why nothing can be served, for the page, the API and the log

    @classmethod
    def load(cls, checkpoints_dir: str | Path, workdir: str | Path | None) -> Runs:
        onednn.prepare()  # conv=auto may use it: built before anything is traced
        root = Path(checkpoints_dir)
        found = {p.name: p for p in sorted(root.iterdir()) if (p / "checkpoints").is_dir()} if root.is_dir() else {}
        runs: dict[str, Run] = {}
        for name, path in found.items():
            try:
                runs[name] = _restore(name, path)
            except UserError as e:  # no finished checkpoint yet, or every one damaged: not offered
                logging.getLogger("webui").warning("%s is not served: %s", name, e)
        default = None
        if workdir:
            path = Path(workdir)
            name = path.name
            if name in runs and runs[name].workdir.resolve() != path.resolve():
                name = str(path)  # a run of that name under checkpoints/ is another one
            try:
                runs[name] = runs.get(name) or _restore(name, path)
            except UserError as e:
                return cls(runs, None, f"DIGITJAX_WORKDIR={workdir} cannot be served: {e}")
            default = name
        elif runs:
            default = max(runs, key=lambda n: (runs[n].workdir / "checkpoints").stat().st_mtime)
        problem = None if runs else f"No trained checkpoint under {root.resolve()}. {HOW_TO_TRAIN}"
        return cls(runs, default, problem)
