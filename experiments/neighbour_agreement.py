"""A sanity figure for the canvas's nearest training digits: how often the majority label of a
test digit's 8 nearest training digits (in the model's embedding) is the model's own answer.

    python -m experiments.neighbour_agreement --workdir checkpoints/fast            # 1,000 test digits
    python -m experiments.neighbour_agreement --workdir checkpoints/fast --n 10000

Uses the served code path (webui.serving: the index built at start-up, the jitted search).
Prints one JSON line; experiments/RESULTS.md has the figures measured.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def measure(run, test, n: int, batch: int = 100) -> dict:
    """Agreement of the 8-neighbour majority with the model's answer and with the true label."""
    images, labels = test.images_NxHxW[:n], test.labels_N[:n]
    answers, majorities = [], []
    for i in range(0, n, batch):
        out = run.predict(images[i : i + batch], ("neighbours",))
        indices_BxK, _ = out["neighbours"]
        votes_BxK = run.predict.index.labels_N[indices_BxK]
        # Ties go to the label of the nearest digit among the tied ones.
        majorities += [max(set(v), key=lambda c, v=v: (list(v).count(c), -list(v).index(c))) for v in votes_BxK]
        answers += list(out["probabilities"].argmax(-1))
    answers, majorities = np.asarray(answers), np.asarray(majorities)
    return {
        "run": run.name,
        "step": run.step,
        "n": n,
        "k": run.predict.k,
        "majority_is_answer": float((majorities == answers).mean()),
        "majority_is_label": float((majorities == labels).mean()),
        "answer_is_label": float((answers == labels).mean()),
    }


def main() -> None:
    from pathlib import Path

    from digitjax import data
    from webui import create_app

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="checkpoints/fast")
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    app = create_app({"WORKDIR": args.workdir, "CHECKPOINTS": str(Path(args.workdir).parent)})
    runs = app.extensions["digitjax"]
    if runs.problem:
        raise SystemExit(runs.problem)
    print(json.dumps(measure(runs.runs[runs.default], data.load("mnist", "test"), args.n)))


if __name__ == "__main__":
    main()
