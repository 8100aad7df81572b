"""The loss, in one place: training minimizes it and evaluation reports it, so a change here
changes both."""

from __future__ import annotations

import jax
import optax


def per_example(logits_BxC: jax.Array, labels_B: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Cross-entropy of each example against its label. `label_smoothing` (a share of each target
    spread evenly over the classes) is a training-only regularizer: evaluation reports the loss
    without it."""
    targets_BxC = optax.smooth_labels(jax.nn.one_hot(labels_B, logits_BxC.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits_BxC, targets_BxC)
