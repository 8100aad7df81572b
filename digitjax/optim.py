"""The optimizer and its learning-rate schedule, by the names a config gives them."""

from __future__ import annotations

import ml_collections
import optax

from digitjax.errors import UserError


def make_optimizer(
    config: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The config's optimizer and its learning-rate schedule over `total_steps`."""
    schedules = {
        "constant": lambda: optax.constant_schedule(config.learning_rate),
        "onecycle": lambda: optax.cosine_onecycle_schedule(total_steps, config.learning_rate, config.warmup_fraction),
        "cosine": lambda: optax.warmup_cosine_decay_schedule(
            0.0, config.learning_rate, int(config.warmup_fraction * total_steps), total_steps
        ),
    }
    optimizers = {
        "adam": lambda lr: optax.adam(lr, b2=config.get("adam_b2", 0.999)),
        "adamw": lambda lr: optax.adamw(lr, b2=config.get("adam_b2", 0.999), weight_decay=config.weight_decay),
        # Keras's rho and epsilon: the seed recipe (lr 1.0) was tuned with them.
        "adadelta": lambda lr: optax.adadelta(lr, rho=0.95, eps=1e-7),
        "sgd": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
    }
    for field, table in (("lr_schedule", schedules), ("optimizer", optimizers)):
        if config[field] not in table:
            raise UserError(f"Unknown {field} {config[field]!r} in the config; choose one of {sorted(table)}.")
    schedule = schedules[config.lr_schedule]()
    return optimizers[config.optimizer](schedule), schedule
