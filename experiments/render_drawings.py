"""Canvas-style drawings made from MNIST's training digits, kept through the API as a person would.

    python -m experiments.render_drawings --workdir checkpoints/default --store instance/drawings.sqlite

A canvas drawing is a uniform dark stroke on white, at whatever size and place the person drew
it; an MNIST digit is a soft grey pen stroke, scaled and centred. Each drawing here is a training
digit (from the end of the split, which is MNIST's held-out validation slice) turned into
that: its ink made uniform, thickened or thinned, squeezed, resized, moved, and its edge
softened. They are POSTed to /api/drawings of `gunicorn "webui:create_app()"` serving the run,
labelled with their true digit, into the store. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import http.client
import io
import json

import numpy as np
from PIL import Image, ImageFilter

from experiments.bench_serve import gunicorn


def render(digit_28x28: np.ndarray, rng: np.random.Generator, size: int = 280) -> np.ndarray:
    """One canvas (uint8, dark ink on white) drawn from an MNIST digit."""
    side = int(rng.integers(110, 250))
    width = int(side * rng.uniform(0.75, 1.1))
    big = Image.fromarray(digit_28x28).resize((width, side), Image.Resampling.BILINEAR)
    ink = Image.fromarray(np.where(np.asarray(big) > 90, 255, 0).astype(np.uint8))  # a stroke: one colour
    change = int(rng.integers(-2, 5))  # pixels of stroke width: thinner (< 0) or thicker
    if change:
        filter_ = ImageFilter.MaxFilter if change > 0 else ImageFilter.MinFilter
        ink = ink.filter(filter_(2 * abs(change) + 1))
    ink = ink.filter(ImageFilter.GaussianBlur(1.0))  # the canvas's anti-aliased edge
    canvas = np.zeros((size, size), np.uint8)
    top, left = rng.integers(0, size - side + 1), rng.integers(0, size - width + 1)
    canvas[top : top + side, left : left + width] = np.asarray(ink)
    return 255 - canvas


def keep(port: int, canvas: np.ndarray, label: int, kind: str) -> int:
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, "PNG")
    body = json.dumps({"image": base64.b64encode(buf.getvalue()).decode(), "label": label, "kind": kind})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/api/drawings", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    if response.status != 201:
        raise RuntimeError(f"/api/drawings answered {response.status}: {answer}")
    return answer["answer"]


def main() -> None:
    from absl import logging

    from digitjax import data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="checkpoints/default", help="the run that answers while they are kept")
    parser.add_argument("--store", default="instance/drawings.sqlite")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.set_verbosity(logging.ERROR)

    train = data.load("mnist", "train")
    rng = np.random.default_rng(args.seed)
    # The last images of TFDS's training split: the trainer's held-out validation slice, so no
    # drawing is made from a digit the run trained on.
    images, labels = train.images_NxHxW[-args.n :], train.labels_N[-args.n :]
    canvases = [render(image, rng) for image in images]
    kinds = rng.choice(["mouse", "touch", "pen"], args.n)
    with gunicorn(
        args.workdir, workers=2, threads=4, DIGITJAX_DRAWINGS_DB=args.store, DIGITJAX_DRAWINGS_RATE_LIMIT="null"
    ) as (port, _):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: keep(port, canvases[i], int(labels[i]), kinds[i]), range(args.n)))
    right = float(np.mean(np.asarray(answers) == labels))
    print(json.dumps({"store": args.store, "kept": args.n, "answered_right_when_kept": right}))


if __name__ == "__main__":
    main()
