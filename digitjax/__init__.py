"""digitjax: handwritten digit recognition with Flax NNX, Optax, Orbax and TFDS."""

__version__ = "0.1.0"
