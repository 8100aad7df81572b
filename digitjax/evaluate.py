"""Evaluation: the test-set numbers the trainer reports, and a report from a restored checkpoint.

    python -m digitjax.evaluate --workdir checkpoints/seed          # report under workdir/report/
    python -m digitjax.evaluate --workdir checkpoints/seed --json   # one JSON object on stdout

The trainer calls `evaluate_arrays` too, so a restored checkpoint evaluates to exactly the
accuracy the run logged for its step.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from digitjax import augment, data
from digitjax import loss as loss_lib
from digitjax import model as model_lib
from digitjax.model import NUM_CLASSES
from digitjax.runs import objectstore, parallel


@nnx.jit(static_argnames="views")
def eval_step(
    model: nnx.Module,
    images_BxHxW: jax.Array,
    labels_B: jax.Array,
    mask_B: jax.Array,
    views: augment.TestViews | None = None,
):
    """views: average the probabilities over the image's test-time views (augment.TestViews)."""
    x_BxHxWx1 = model_lib.to_input(images_BxHxW)
    if views is not None:
        probs_VxBxC = jnp.stack([jax.nn.softmax(model(v)) for v in views.of(x_BxHxWx1)])
        logits_BxC = jnp.log(probs_VxBxC.mean(0))  # log-probabilities: softmax gives the average back
    else:
        logits_BxC = model(x_BxHxWx1)
    losses_B = loss_lib.per_example(logits_BxC, labels_B)  # the training loss, without its smoothing
    correct_B = jnp.argmax(logits_BxC, -1) == labels_B
    return jnp.sum(losses_B * mask_B), jnp.sum(correct_B * mask_B), logits_BxC


def batches(
    images_NxHxW: np.ndarray, labels_N: np.ndarray, batch_size: int, sharding: jax.sharding.Sharding | None = None
):
    """Splits a whole split into equal device batches: the last one padded and masked.

    `sharding` places each batch on a mesh (the trainer's), else on the default device.
    """
    put = functools.partial(parallel.put, sharding=sharding) if sharding is not None else jax.device_put
    n = len(labels_N)
    pad = -n % batch_size
    images = np.concatenate([images_NxHxW, np.zeros((pad, *images_NxHxW.shape[1:]), np.uint8)])
    labels = np.concatenate([labels_N, np.zeros(pad, np.int32)])
    mask = np.arange(n + pad) < n
    return [
        put((images[i : i + batch_size], labels[i : i + batch_size], mask[i : i + batch_size]))
        for i in range(0, n + pad, batch_size)
    ]


def evaluate_arrays(model: nnx.Module, device_batches: list, n: int, views: augment.TestViews | None = None) -> dict:
    """Loss, accuracy and logits over every example of `device_batches` (no remainder dropped)."""
    model.eval()
    loss, correct, logits = jnp.zeros(()), jnp.zeros((), jnp.int32), []
    for images, labels, mask in device_batches:
        batch_loss, batch_correct, batch_logits = eval_step(model, images, labels, mask, views)
        loss, correct = loss + batch_loss, correct + batch_correct
        logits.append(batch_logits)
    # On a mesh spanning processes, each holds only its shards: gather them.
    logits_NxC = np.asarray(multihost_utils.process_allgather(jnp.concatenate(logits)[:n], tiled=True))
    return {"accuracy": int(correct) / n, "loss": float(loss) / n, "logits_NxC": logits_NxC}


def predictions_string(logits_NxC: np.ndarray) -> str:
    """Predicted labels as one digit each: compact enough to keep in a checkpoint's metadata."""
    return "".join(map(str, np.asarray(logits_NxC).argmax(-1)))


def confusion_matrix(labels_N: np.ndarray, predictions_N: np.ndarray) -> np.ndarray:
    """counts_CxC[true, predicted]."""
    counts_CxC = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(counts_CxC, (labels_N, predictions_N), 1)
    return counts_CxC


def report(workdir: epath.Path, step: int | None, paths: data.Paths, plots: bool) -> dict:
    from digitjax.ops import onednn
    from digitjax.runs import checkpoint

    onednn.prepare()  # conv=auto may use it: built before anything is traced
    restored = checkpoint.load_for_inference(workdir, step)
    for note in restored.notes:
        print(note, file=sys.stderr)
    config = restored.config
    test = data.load(data.dataset_of(config), "test", paths)
    device_batches = batches(test.images_NxHxW, test.labels_N, config.eval_batch_size)
    result = evaluate_arrays(restored.model, device_batches, len(test.labels_N), augment.TestViews.from_config(config))
    predictions_N = result["logits_NxC"].argmax(-1)
    counts_CxC = confusion_matrix(test.labels_N, predictions_N)
    summary = {
        "workdir": str(workdir),
        "step": restored.step,
        "model": restored.config.model,
        "dataset": data.dataset_of(config),
        "class_names": list(data.dataset(data.dataset_of(config)).class_names),
        "test_accuracy": result["accuracy"],
        "test_loss": result["loss"],
        "test_errors": int((predictions_N != test.labels_N).sum()),
        "per_class_accuracy": {str(c): float(counts_CxC[c, c] / counts_CxC[c].sum()) for c in range(NUM_CLASSES)},
        "confusion_matrix": counts_CxC.tolist(),
        "mistakes": mistakes(test.labels_N, jax.nn.softmax(result["logits_NxC"])),
        # Labels that differ from those the trainer predicted at this step (None: not recorded,
        # e.g. a mid-epoch checkpoint). Nonzero only if numerics differ, e.g. on another device kind.
        "labels_changed_since_training": _changed(restored.meta.get("test_predictions"), predictions_N),
        "trained_on": restored.meta.get("device_kind"),
        "evaluated_on": jax.devices()[0].device_kind,
    }
    out = workdir / "report"
    out.mkdir(exist_ok=True)
    # Whole or not at all: the web app reads reports while it makes them.
    objectstore.write_text(out / "report.json", json.dumps(summary, indent=2) + "\n")
    if plots:
        from digitjax import plots as plots_lib
        from digitjax.runs import metrics

        probs_NxC = np.asarray(jax.nn.softmax(result["logits_NxC"]))
        plots_lib.confusion(counts_CxC, out / "confusion.png")
        plots_lib.worst_mistakes(test.images_NxHxW, test.labels_N, probs_NxC, out / "mistakes.png")
        plots_lib.curves(metrics.read(workdir), out / "curves.png")
    return summary


def _plots_installed() -> bool:
    """matplotlib is the `plots` extra: a training-only install evaluates without the PNGs, and says so."""
    if importlib.util.find_spec("matplotlib") is None:
        print("No plots: matplotlib is not installed (pip install 'digitjax[plots]').", file=sys.stderr)
        return False
    return True


def mistakes(labels_N: np.ndarray, probs_NxC: np.ndarray) -> list[dict]:
    """Every wrong answer, the most confident first; `index` is the digit's place in the test split."""
    probs_NxC = np.asarray(probs_NxC)
    predictions_N = probs_NxC.argmax(-1)
    wrong = np.flatnonzero(predictions_N != labels_N)
    wrong = wrong[np.argsort(-probs_NxC[wrong, predictions_N[wrong]], kind="stable")]
    return [
        {
            "index": int(i),
            "label": int(labels_N[i]),
            "predicted": int(predictions_N[i]),
            "confidence": round(float(probs_NxC[i, predictions_N[i]]), 5),
        }
        for i in wrong
    ]


def drawings_report(restored, store_or_dir: str) -> dict:
    """Accuracy, confusion matrix and mistakes on the test split of people's labelled drawings
    (digitjax/canvas/drawings.py), where MNIST's test set says little about the canvas."""
    from digitjax.canvas import drawings

    images_NxHxW, labels_N = drawings.load(store_or_dir)["test"]
    if not len(labels_N):
        return {"drawings": store_or_dir, "count": 0}
    config = restored.config
    device_batches = batches(images_NxHxW, labels_N.astype(np.int32), config.eval_batch_size)
    result = evaluate_arrays(restored.model, device_batches, len(labels_N), augment.TestViews.from_config(config))
    predictions_N = result["logits_NxC"].argmax(-1)
    return {
        "drawings": store_or_dir,
        "count": len(labels_N),
        "accuracy": result["accuracy"],
        "loss": result["loss"],
        "confusion_matrix": confusion_matrix(labels_N, predictions_N).tolist(),
        "mistakes": mistakes(labels_N, jax.nn.softmax(result["logits_NxC"])),
    }


def _changed(recorded: str | None, predictions_N: np.ndarray) -> int | None:
    if recorded is None:
        return None
    return int((np.frombuffer(recorded.encode(), np.uint8) - ord("0") != predictions_N).sum())


def main(argv=None) -> None:
    from absl import logging

    from digitjax.errors import exit_on_user_error

    logging.set_verbosity(logging.ERROR)  # orbax and TFDS warn about nothing a user can act on

    parser = argparse.ArgumentParser(description="Evaluate a trained digitjax checkpoint on its dataset's test set.")
    parser.add_argument("--workdir", default="checkpoints/default", help="the run's directory")
    parser.add_argument("--step", type=int, help="checkpoint step (default: best by validation, else latest)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout, no plots")
    parser.add_argument("--data_dir", help="TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--idx_dir", help="folder with a subfolder of IDX files per dataset ($DIGITJAX_IDX_DIR)")
    parser.add_argument(
        "--drawings", help="also the test split of the canvas's labelled drawings: a store or an export"
    )
    args = parser.parse_args(argv)
    with exit_on_user_error():
        paths = data.Paths(args.data_dir, args.idx_dir)
        plots = not args.json and _plots_installed()
        summary = report(epath.Path(args.workdir), args.step, paths, plots=plots)
        if args.drawings:
            from digitjax.runs import checkpoint

            restored = checkpoint.load_for_inference(epath.Path(args.workdir), summary["step"])
            summary["drawings"] = drawings_report(restored, args.drawings)
    if args.json:
        print(json.dumps(summary))
        return
    accuracy, errors = summary["test_accuracy"], summary["test_errors"]
    run = f"{args.workdir} step {summary['step']} ({summary['model']}, {summary['dataset']})"
    print(f"{run}: test accuracy {accuracy:.4%}, {errors} errors")
    for name, acc in zip(summary["class_names"], summary["per_class_accuracy"].values()):
        print(f"  {name}: {acc:.2%}")
    if drawn := summary.get("drawings"):
        if drawn["count"]:
            wrong = len(drawn["mistakes"])
            print(
                f"drawings ({drawn['drawings']}, test split): accuracy {drawn['accuracy']:.2%} "
                f"of {drawn['count']}, {wrong} wrong"
            )
        else:
            print(f"drawings ({drawn['drawings']}): none in the test split yet")
    pngs = ", confusion.png, mistakes.png, curves.png" if plots else ""
    print(f"report: {epath.Path(args.workdir) / 'report'} (report.json{pngs})")


if __name__ == "__main__":
    main()
