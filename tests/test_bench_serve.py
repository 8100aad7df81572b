"""The serving benchmark and load tests in smoke mode: gunicorn over loopback, no error, no mix-up,
nothing acknowledged lost."""

import json
from pathlib import Path

import pytest

# Trains on the real MNIST, and serves it under gunicorn: the full suite only.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_bench_serve_smoke_under_gunicorn(served_checkpoints, run_cli):
    proc = run_cli("experiments.bench_serve", "--workdir", str(served_checkpoints / "tiny"), "--smoke", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["errors"] == 0 and report["one_client_requests"] == 20
    assert report["concurrent_requests_per_s"] > 0
    kinds = report["one_client"]
    assert set(kinds) == {"plain", "saliency", "insight"} and all(k["model_ms_p50"] > 0 for k in kinds.values())
    # The page's answer carries every layer and the neighbours; a plain one only the answer.
    assert kinds["plain"]["response_bytes"] < kinds["saliency"]["response_bytes"] < kinds["insight"]["response_bytes"]


def test_load_test_smoke_concurrent_answers_are_each_their_own(served_checkpoints, run_cli):
    proc = run_cli("experiments.load_test", "--workdir", str(served_checkpoints / "tiny"), "--smoke", check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["check_requests"] == 200 and report["check_wrong"] == 0
    assert report["load_errors"] == 0 and report["load_requests"] > 0 and report["p99_ms"] > 0


def test_load_drawings_smoke_nothing_acknowledged_is_lost_or_mixed_up(served_checkpoints, run_cli):
    proc = run_cli("experiments.load_drawings", "--workdir", str(served_checkpoints / "tiny"), "--smoke", check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["load"]["acknowledged"] == report["load"]["stored"] == 200 and report["load"]["wrong"] == 0
    backup = report["backup"]  # taken halfway through the load, while it went on
    assert backup["integrity"] == "ok" and backup["acknowledged"] >= 100 and backup["missing"] == backup["wrong"] == 0
    kill = report["kill"]
    assert kill["acknowledged"] >= 100 and kill["missing"] == kill["wrong"] == 0 and kill["integrity"] == "ok"
