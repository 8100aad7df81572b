"""The seed recipe: the classic Keras MNIST CNN, Adadelta lr 1.0, batch 128, 10 epochs.

    python -m digitjax.train --config experiments/seed.py --workdir checkpoints/seed

Expected: 99.31% test accuracy after 10 epochs (98.43% after the first, 99.00% after the
fifth), seed 0; 343 s of wall time for the whole command on the 2-core CPU machine, ~30 s an
epoch of training with oneDNN's convolutions (digitjax's own: 99.25%, ~54 s an epoch).
"""

import ml_collections

from experiments import default


def get_config():
    config = default.get_config()
    config.model = "seed"
    config.model_kwargs = ml_collections.ConfigDict(dict(widths=(32, 64), hidden=256, dropout=(0.25, 0.5)))
    config.num_epochs = 10
    config.optimizer = "adadelta"
    config.learning_rate = 1.0
    config.lr_schedule = "constant"
    config.validation_size = 0
    config.checkpoint_every_steps = 100
    return config
