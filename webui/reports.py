"""What a run page shows: the run's learning curves and its evaluation report, made when missing.

Curves come from the run's `metrics.jsonl`; the report is `python -m digitjax.evaluate`'s
`report/report.json`. A served run without one (or with one of another step) gets it made in
a background thread, once per process, while requests go on being answered.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading

from etils import epath

from digitjax import data, evaluate
from digitjax.errors import UserError
from digitjax.runs import metrics
from webui.serving import Run

CURVE_FIELDS = ("step", "split", "loss", "accuracy", "train_seconds")


def curves(run: Run) -> list[dict]:
    """The run's metrics.jsonl records, with only the fields a chart draws."""
    return [{k: r[k] for k in CURVE_FIELDS if k in r} for r in metrics.read(run.workdir)]


def _read(run: Run) -> dict | None:
    """The run's report, if it is one of the served step made by this digitjax (it lists mistakes)."""
    path = run.workdir / "report" / "report.json"
    try:
        report = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # none, or one being written by an older digitjax
        return None
    return report if report.get("step") == run.step and "mistakes" in report else None


class Reports:
    """Reports of the served runs: read from disk, or made once in the background."""

    def __init__(self, paths: data.Paths):
        self.paths = paths
        self._making: dict[str, concurrent.futures.Future] = {}
        self._lock = threading.Lock()
        # One at a time: a report evaluates 10,000 digits, and the served requests share the CPU.
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="report")

    def get(self, run: Run) -> tuple[dict | None, str, str | None]:
        """(report, status, problem): status "ready", "making" or "failed" (problem says why)."""
        if (report := _read(run)) is not None:
            return report, "ready", None
        with self._lock:
            future = self._making.get(run.name)
            if future is None or (future.done() and future.exception() is None):
                future = self._making[run.name] = self._pool.submit(self._make, run)
        if not future.done():
            return None, "making", None
        return None, "failed", str(future.exception())

    def _make(self, run: Run) -> None:
        logging.getLogger("webui").info("making the report of %s (step %d)", run.name, run.step)
        try:
            evaluate.report(epath.Path(run.workdir), run.step, self.paths, plots=False)
        except UserError:
            raise
        except Exception as e:  # shown on the page; the details go to the log
            logging.getLogger("webui").exception("report of %s failed", run.name)
            raise RuntimeError(f"the report could not be made ({type(e).__name__}: {e})") from e
