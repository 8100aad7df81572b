"""The report's pictures: confusion matrix, worst mistakes, training curves (matplotlib PNGs)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402


def _save(fig, path: epath.Path) -> None:
    with epath.Path(path).open("wb") as f:  # a file object: the report may be on a bucket
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def confusion(counts_CxC: np.ndarray, path: epath.Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    # Log colours: the diagonal holds ~1,000 per class and the errors a handful.
    im = ax.imshow(np.log1p(counts_CxC), cmap="Blues")
    for (i, j), v in np.ndenumerate(counts_CxC):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if i == j else "black")
    ax.set(xlabel="predicted", ylabel="true", xticks=range(10), yticks=range(10), title="Confusion matrix (test set)")
    fig.colorbar(im, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    _save(fig, path)


def worst_mistakes(
    images_NxHxW: np.ndarray, labels_N: np.ndarray, probs_NxC: np.ndarray, path: epath.Path, count: int = 32
) -> None:
    """The wrong answers the model was most confident about."""
    predictions_N = probs_NxC.argmax(-1)
    wrong = np.flatnonzero(predictions_N != labels_N)
    wrong = wrong[np.argsort(-probs_NxC[wrong, predictions_N[wrong]])][:count]
    cols = 8
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images_NxHxW[i], cmap="gray_r")
        ax.set_title(f"#{i}: {labels_N[i]}→{predictions_N[i]} {probs_NxC[i, predictions_N[i]]:.0%}", fontsize=7)
    errors = int((predictions_N != labels_N).sum())
    fig.suptitle(f"Most confident of {errors} mistakes: true→predicted (#: index in TFDS's test split)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def curves(records: list[dict], path: epath.Path) -> None:
    """Training loss and accuracies against step, from the run's metrics.jsonl."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-"), ("val", "o-"), ("test", "s-")):
        rows = [r for r in records if r["split"] == split]
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        ax_loss.plot(steps, [r["loss"] for r in rows], style, label=split, markersize=3)
        ax_acc.plot(steps, [r["accuracy"] for r in rows], style, label=split, markersize=3)
    ax_loss.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="Loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", ylim=(0.95, 1.0), title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, path)
