"""A tiny run for tests: the `fast` CNN for one epoch of a few batches, checkpoints often.

    python -m digitjax.train --config experiments/smoke.py --workdir /tmp/smoke

Expected: ~92% test accuracy in ~17 s on the 2-core CPU machine; accuracy is not its goal.
"""

from experiments import default


def get_config():
    c = default.get_config()
    c.num_epochs = 2
    c.batch_size = 32
    c.validation_size = 1000
    c.train_size = 1024
    c.log_every_steps = 5
    c.checkpoint_every_steps = 10
    return c
