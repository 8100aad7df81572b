"""Convolution routes: how each `Conv` is computed (XLA, oneDNN, Winograd, shifted matmuls).

The parameters are the same on every route, so a researcher never needs to read this to change a
model; `config.conv` picks the route (digitjax/ops/conv.py).
"""
