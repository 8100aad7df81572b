"""The seed model and recipe in Keras on TensorFlow (CPU), timed like `digitjax.tools.bench`.

Optional peer (`pip install tensorflow-cpu`); never needed by CI. The classic Keras MNIST CNN,
Adadelta lr 1.0 (rho 0.95, eps 1e-7), the same batch size, uint8 images in memory.
"""

from __future__ import annotations

import os
import time

import numpy as np


def bench(batch_size: int = 128, steps: int = 60, n: int = 60000) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    # Left to itself, TensorFlow here runs some whole runs on one core (744 images/s against
    # ~1,500): pin its op thread pool to every core, as the PyTorch peer does.
    tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count())
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Dropout(0.25),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adadelta(learning_rate=1.0, rho=0.95, epsilon=1e-7),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    count = batch_size * (steps + 3)
    images = rng.integers(0, 256, (count, 28, 28, 1), np.uint8).astype(np.float32)
    labels = rng.integers(0, 10, count)
    model.fit(images[: 3 * batch_size], labels[: 3 * batch_size], batch_size=batch_size, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(images[3 * batch_size :], labels[3 * batch_size :], batch_size=batch_size, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    images_per_s = steps * batch_size / seconds
    return {
        "variant": "keras",
        "model": "seed",
        "batch_size": batch_size,
        "train_images_per_s": images_per_s,
        "seconds_per_epoch": 60000 / images_per_s,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "threads": tf.config.threading.get_intra_op_parallelism_threads(),
    }


if __name__ == "__main__":  # python -m experiments.peers.<this> [batch_size [steps]]: one JSON line
    import json
    import sys

    print(json.dumps(bench(*map(int, sys.argv[1:3]))))
