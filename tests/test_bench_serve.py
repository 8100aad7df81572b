"""The serving benchmark's smoke mode: gunicorn serves the app over loopback without an error."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_serve_smoke_under_gunicorn(served_checkpoints):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.bench_serve", "--workdir", str(served_checkpoints / "tiny"), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["errors"] == 0 and report["one_client_requests"] == 20
    assert report["concurrent_requests_per_s"] > 0 and report["model_ms_p50"] > 0
