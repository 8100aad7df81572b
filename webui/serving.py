"""The served runs: each restored with `load_for_inference`, its layers described, its training
set embedded for the nearest digits, and its predict function compiled."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from digitjax import data, layers
from digitjax import model as model_lib
from digitjax.errors import UserError
from digitjax.ops import onednn
from digitjax.runs import checkpoint
from webui import neighbours as neighbours_lib
from webui.inputs import BadInput

HOW_TO_TRAIN = (
    "Train one with `python -m digitjax.train` (writes checkpoints/default), or point DIGITJAX_WORKDIR "
    "at a run directory, then start the server again."
)


FIELDS = ("saliency", "layers", "neighbours")  # the optional parts of an answer a request can ask for
# Compiled when a run is loaded, so a request with these fields never waits for XLA: plain
# clients, the API's default (saliency), and the page's live loop.
WARM_FIELDS = ((), ("saliency",), FIELDS)


def quantize(value_BxD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per example: uint8 levels, and the low and high value that levels 0 and 255 stand for."""
    low_B = value_BxD.min(-1)
    high_B = jnp.maximum(value_BxD.max(-1), low_B + 1e-6)
    levels_BxD = jnp.round((value_BxD - low_B[:, None]) / (high_B - low_B)[:, None] * 255).astype(jnp.uint8)
    return levels_BxD, low_B, high_B


class Predictor:
    """A run's jitted predict function: uint8 images_Bx28x28 -> probabilities and the parts asked for.

    Pure (the model's state and the index are arguments), so concurrent requests cannot interfere;
    one compiled variant per set of fields.
    """

    def __init__(self, model: nnx.Module, index: neighbours_lib.Index | None, k: int):
        self.graphdef, self.state = nnx.split(model)
        self.index, self.k = index, k
        self._jitted = jax.jit(self._predict, static_argnames="fields")

    def _predict(self, state, index_arrays, images_BxHxW, fields: tuple[str, ...]) -> dict:
        x_BxHxWx1 = model_lib.to_input(images_BxHxW)
        logits_BxC, recorded = layers.record(nnx.merge(self.graphdef, state), x_BxHxWx1)
        out = {"probabilities": jax.nn.softmax(logits_BxC)}
        if "saliency" in fields:
            top_B = jnp.argmax(logits_BxC, -1)

            def top_logit(x):
                return jnp.take_along_axis(nnx.merge(self.graphdef, state)(x), top_B[:, None], 1).sum()

            # Input gradient of the winning logit: the pixels whose change would move the answer most.
            grad_BxHxW = jnp.abs(jax.grad(top_logit)(x_BxHxWx1))[..., 0]
            out["saliency"] = grad_BxHxW / jnp.maximum(grad_BxHxW.max(axis=(1, 2), keepdims=True), 1e-12)
        if "layers" in fields:
            # One array of levels and one of ranges for all layers: each output is a copy to the host.
            quantized = [quantize(value.reshape(value.shape[0], -1)) for _, value, _ in recorded]
            out["levels"] = jnp.concatenate([levels for levels, _, _ in quantized], -1)
            out["ranges"] = jnp.stack([jnp.stack([low, high], -1) for _, low, high in quantized], 1)
        if "neighbours" in fields:
            embeddings_NxD, sq_norms_N = index_arrays
            query_BxD = layers.embedding(recorded)
            out["neighbours"] = neighbours_lib.nearest(query_BxD, embeddings_NxD, sq_norms_N, self.k)
        return out

    def __call__(self, images_BxHxW: np.ndarray, fields: tuple[str, ...] = ()) -> dict:
        """probabilities BxC, and as asked: saliency BxHxW, levels BxD (uint8, every layer's values
        flattened one after another) with ranges BxLx2 (each layer's low and high), neighbours
        (indices BxK, distances BxK)."""
        if "neighbours" in fields and self.index is None:
            raise ValueError("this run has no neighbour index")
        index_arrays = (self.index.embeddings_NxD, self.index.sq_norms_N) if "neighbours" in fields else None
        out = self._jitted(self.state, index_arrays, images_BxHxW, fields=tuple(sorted(fields)))
        return jax.tree.map(np.asarray, out)


@dataclasses.dataclass
class Run:
    name: str
    workdir: Path
    step: int
    model_name: str
    dataset: str  # the TFDS dataset it was trained on; its class names label the answers
    test_accuracy: float | None
    trained_on: str | None
    predict: Predictor
    layers: list[layers.Layer]
    neighbours_problem: str | None  # why the nearest training digits cannot be shown, if they cannot
    notes: list[str] = dataclasses.field(default_factory=list)  # damaged checkpoints passed over

    def describe(self) -> dict:
        return {
            "name": self.name,
            "step": self.step,
            "model": self.model_name,
            "dataset": self.dataset,
            "class_names": list(data.dataset(self.dataset).class_names),
            "test_accuracy": self.test_accuracy,
            "trained_on": self.trained_on,
            "notes": self.notes,
            "layers": [layer.describe() for layer in self.layers],
            "neighbours": self.neighbours_problem is None,
            "neighbours_problem": self.neighbours_problem,
            "neighbours_pending": self.neighbours_problem == PENDING,
        }

    def timed_predict(self, image_28x28: np.ndarray, fields: tuple[str, ...]) -> tuple[dict, float]:
        start = time.perf_counter()
        out = self.predict(image_28x28[None], fields)
        return jax.tree.map(lambda a: a[0], out), (time.perf_counter() - start) * 1000


PENDING = "the training set is still being embedded for this run; the nearest digits appear when it is done"


def _restore(name: str, workdir: Path, datasets: Datasets, k: int, wait_s: float) -> Run:
    restored = checkpoint.load_for_inference(workdir)
    shown = layers.describe(restored.model, model_lib.INPUT_SHAPE)
    problem, train = None, None
    if not shown:
        problem = "the model marks no layers (digitjax/layers.py), so it has no embedding to search in"
    elif not k:
        problem = "turned off (NEIGHBOURS = 0)"
    elif (train := datasets.split(data.dataset_of(restored.config), "train")) is None:
        problem = datasets.problem
    run = Run(
        name=name,
        workdir=workdir,
        step=restored.step,
        model_name=restored.config.model,
        dataset=data.dataset_of(restored.config),
        test_accuracy=restored.meta.get("test_accuracy"),
        trained_on=restored.meta.get("device_kind"),
        predict=Predictor(restored.model, None, k),
        layers=shown,
        neighbours_problem=problem or PENDING,
        notes=restored.notes,
    )
    for note in restored.notes:
        logging.getLogger("webui").warning(note)
    for fields in WARM_FIELDS[:-1]:  # compile now: requests only ever send one image
        run.predict(np.zeros((1, 28, 28), np.uint8), fields)
    if problem is None:
        _index_in_background(run, restored.model, train, wait_s)
    return run


def _index_in_background(run: Run, model: nnx.Module, train: data.Split, wait_s: float) -> None:
    """Builds the run's neighbour index (and compiles its search) in a thread, waiting up to
    `wait_s` for it: a first embedding of the training set can outlast a server's start-up
    timeout (gunicorn kills a worker silent for 30 s); until it is done, answers come without."""
    done = threading.Event()

    def build():
        try:
            cache = run.workdir / "embeddings" / str(run.step)  # beside the checkpoint it was computed with
            run.predict.index = neighbours_lib.build(model, train.images_NxHxW, train.labels_N, cache)
            run.predict(np.zeros((1, 28, 28), np.uint8), WARM_FIELDS[-1])
            run.neighbours_problem = None
        except Exception as e:  # shown with the run; the details go to the log
            logging.getLogger("webui").exception("embedding the training set for %s failed", run.name)
            run.neighbours_problem = f"embedding the training set failed ({type(e).__name__}: {e})"
        finally:
            done.set()

    threading.Thread(target=build, name=f"embed-{run.name}", daemon=True).start()
    if not done.wait(wait_s):
        logging.getLogger("webui").warning("%s: serving without neighbours until the embedding is done", run.name)


class Datasets:
    """The served runs' datasets for the app (training images for neighbours, test images for run
    pages), each split loaded when first needed; `problem` says why one could not be."""

    def __init__(self, paths: data.Paths):
        self.paths = paths
        self.problem: str | None = None
        self._splits: dict[tuple[str, str], data.Split | None] = {}
        self._lock = threading.Lock()

    def split(self, dataset: str, name: str) -> data.Split | None:
        with self._lock:  # two requests wanting the test split load it once
            if (dataset, name) not in self._splits:
                try:
                    self._splits[dataset, name] = data.load(dataset, name, self.paths)
                except UserError as e:
                    self.problem = f"{dataset} could not be loaded: {e}"
                    logging.getLogger("webui").warning(self.problem)
                    self._splits[dataset, name] = None
            return self._splits[dataset, name]


@dataclasses.dataclass
class Runs:
    runs: dict[str, Run]
    default: str | None
    problem: str | None  # why nothing can be served, for the page, the API and the log

    def named(self, name) -> Run:
        """The run a request names (None: the default), or the 4xx/5xx that says why there is none."""
        if self.problem:
            raise BadInput(self.problem, 503)
        name = name or self.default
        if not isinstance(name, str) or name not in self.runs:
            raise BadInput(f"Unknown run {name!r}; GET /api/model lists the runs served here.", 404)
        return self.runs[name]

    @classmethod
    def load(
        cls, checkpoints_dir: str | Path, workdir: str | Path | None, datasets: Datasets, k: int, wait_s: float
    ) -> Runs:
        onednn.prepare()  # conv=auto may use it: built before anything is traced
        root = Path(checkpoints_dir)
        found = {p.name: p for p in sorted(root.iterdir()) if (p / "checkpoints").is_dir()} if root.is_dir() else {}
        runs: dict[str, Run] = {}
        for name, path in found.items():
            try:
                runs[name] = _restore(name, path, datasets, k, wait_s)
            except UserError as e:  # no finished checkpoint yet, or every one damaged: not offered
                logging.getLogger("webui").warning("%s is not served: %s", name, e)
        default = None
        if workdir:
            path = Path(workdir)
            name = path.name
            if name in runs and runs[name].workdir.resolve() != path.resolve():
                name = str(path)  # a run of that name under checkpoints/ is another one
            try:
                runs[name] = runs.get(name) or _restore(name, path, datasets, k, wait_s)
            except UserError as e:
                return cls(runs, None, f"DIGITJAX_WORKDIR={workdir} cannot be served: {e}")
            default = name
        elif runs:
            default = max(runs, key=lambda n: (runs[n].workdir / "checkpoints").stat().st_mtime)
        problem = None if runs else f"No trained checkpoint under {root.resolve()}. {HOW_TO_TRAIN}"
        return cls(runs, default, problem)
