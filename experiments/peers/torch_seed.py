"""The seed model and recipe in PyTorch (on its GPU when there is one), timed as `digitjax.tools.bench` times digitjax.

Optional peer (`pip install torch`); never needed by CI. Same model (conv 32 3x3, conv 64 3x3,
max-pool 2, dropout 0.25, dense 256, dropout 0.5, dense 10), Adadelta lr 1.0 (rho 0.95,
eps 1e-7), the same batch size, uint8 images of MNIST's shape already in memory.
"""

from __future__ import annotations

import os
import time

import numpy as np


def bench(batch_size: int = 128, steps: int = 60, n: int = 60000) -> dict:
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(9216, 256),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(256, 10),
    ).to(device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0, rho=0.95, eps=1e-7)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (n, 1, 28, 28), np.uint8)).to(device)
    labels = torch.from_numpy(rng.integers(0, 10, n).astype(np.int64)).to(device)
    order = torch.randperm(n, device=device)

    def step(i):
        idx = order[(i * batch_size) % (n - batch_size) :][:batch_size]
        x = images[idx].float() / 255.0
        loss = nn.functional.cross_entropy(model(x), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    for i in range(3):
        step(i)
    sync()
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    sync()
    seconds = time.perf_counter() - start
    images_per_s = steps * batch_size / seconds
    return {
        "variant": "pytorch",
        "model": "seed",
        "batch_size": batch_size,
        "train_images_per_s": images_per_s,
        "seconds_per_epoch": 60000 / images_per_s,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device_kind": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    }


if __name__ == "__main__":  # python -m experiments.peers.<this> [batch_size [steps]]: one JSON line
    import json
    import sys

    print(json.dumps(bench(*map(int, sys.argv[1:3]))))
