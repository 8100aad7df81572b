"""A tiny run for tests: the `fast` CNN for one epoch of a few batches, checkpoints often.

    python -m digitjax.train --config experiments/smoke.py --workdir /tmp/smoke

Expected: ~92% test accuracy in ~17 s on the 2-core CPU machine; accuracy is not its goal.
"""

from experiments import default


def get_config():
    config = default.get_config()
    config.num_epochs = 2
    config.batch_size = 32
    config.validation_size = 1000
    config.train_size = 1024
    config.log_every_steps = 5
    config.checkpoint_every_steps = 10
    return config
