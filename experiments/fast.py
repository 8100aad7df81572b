"""Least time to 99% test accuracy: the `fast` CNN on all 60,000 images, 3 epochs.

    python -m digitjax.train --config experiments/fast.py

Expected: see the table in README.md (measured on the 2-core CPU machine).
"""

from experiments import default


def get_config():
    c = default.get_config()
    c.num_epochs = 3
    c.validation_size = 0
    return c
