"""Run metrics as JSON lines (`workdir/metrics.jsonl`) and TensorBoard events (`workdir/tensorboard`)."""

from __future__ import annotations

import json
import math
import time

from etils import epath

from digitjax.runs import objectstore


def metrics_path(workdir: str | epath.Path) -> epath.Path:
    return epath.Path(workdir) / "metrics.jsonl"


def tensorboard_dir(workdir: str | epath.Path) -> epath.Path:
    """TensorBoard's logdir for a run: scalars, the config as hparams, and profiles (digitjax/runs/profiling.py)."""
    return epath.Path(workdir) / "tensorboard"


def read(workdir: str | epath.Path) -> list[dict]:
    try:
        text = objectstore.read_text(metrics_path(workdir))  # whole, also while a run rewrites it on a bucket
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


TARGETS = (0.99, 0.995)  # the test accuracies whose time-to is reported


def time_to(records: list[dict], target: float) -> float | None:
    """Training seconds at the first test evaluation at or above `target`; None if never reached."""
    hits = [r["train_seconds"] for r in records if r["split"] == "test" and r["accuracy"] >= target]
    return min(hits) if hits else None


class MetricWriter:
    """Appends one JSON object per record; mirrors numbers to TensorBoard."""

    def __init__(self, workdir: str | epath.Path, resume_step: int = 0, enabled: bool = True):
        from tensorboardX import SummaryWriter  # writes event files without TensorFlow

        self.enabled = enabled  # off in all but one process of a multi-host run
        if not enabled:
            return

        self.path = metrics_path(workdir)
        # Records past the step a run resumes from were written by the attempt that died;
        # the resumed run writes them again, so drop them rather than keep two versions.
        self.lines = [json.dumps(r) + "\n" for r in read(workdir) if r["step"] <= resume_step]
        objectstore.write_text(self.path, "".join(self.lines))
        # The suffix keeps two attempts started in the same second from writing one file name (on
        # a bucket, the second would replace the first).
        purge = resume_step + 1 if resume_step else None
        self.tb = SummaryWriter(str(tensorboard_dir(workdir)), purge_step=purge, filename_suffix=f".{time.time_ns()}")

    def write_config(self, config) -> None:
        """The run's config as TensorBoard hparams, beside the accuracies they led to."""
        from tensorboardX.summary import hparams

        if not self.enabled:
            return
        flat = {}
        for key, value in config.to_dict().items():
            flat[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
        metrics = {f"{split}/accuracy": None for split in ("test", "val")}
        for summary in hparams(flat, metrics):
            self.tb.file_writer.add_summary(summary)

    def write(self, step: int, split: str, values: dict) -> None:
        if not self.enabled:
            return
        self.lines.append(json.dumps({"step": step, "split": split, **values}) + "\n")
        if objectstore.is_remote(self.path):  # objects cannot be appended to: the file is written anew
            objectstore.write_text(self.path, "".join(self.lines))
        else:
            with self.path.open("a") as f:
                f.write(self.lines[-1])
        for name, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
