"""What the canvas needs beside the model: a drawing turned into an MNIST-like image, and the
store of labelled drawings people teach it (`python -m digitjax.canvas.drawings`)."""
