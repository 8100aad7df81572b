"""The training state: what a step changes and a checkpoint keeps."""

from __future__ import annotations

from flax import nnx


class TrainState(nnx.Module):
    """Everything a training step changes: the model, its optimizer, the running metrics and,
    in runs that keep one, the average of the weights that is evaluated and served."""

    def __init__(self, model: nnx.Module, optimizer: nnx.Optimizer, metrics: nnx.MultiMetric, ema=None):
        self.model = model
        self.optimizer = optimizer
        self.metrics = metrics
        self.ema = ema

    @property
    def evaluated(self) -> nnx.Module:
        return self.ema if self.ema is not None else self.model
