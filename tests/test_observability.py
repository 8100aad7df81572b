"""What a researcher looks at: the run's config as TensorBoard hparams, and a profile of chosen
steps opened by TensorBoard's own profile plugin, served by a real TensorBoard."""

import gzip
import json
import subprocess
import sys
import time
import urllib.request

import pytest

from experiments.bench_serve import free_port

pytestmark = pytest.mark.slow  # trains on MNIST, then starts TensorBoard


def _get(port: int, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as answer:
        body = answer.read()
        return json.loads(gzip.decompress(body) if answer.headers.get("Content-Encoding") == "gzip" else body)


@pytest.fixture
def tensorboard():
    processes = []

    def start(logdir):
        port = free_port()
        command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port)]
        processes.append(subprocess.Popen(command + ["--host", "127.0.0.1"], stderr=subprocess.DEVNULL))
        for _ in range(120):
            try:
                _get(port, "/data/plugins_listing")
                return port
            except OSError:
                time.sleep(0.5)
        raise AssertionError("TensorBoard did not start")

    yield start
    for p in processes:
        p.terminate()
        p.wait(timeout=30)


def test_profile_of_chosen_steps_and_config_as_hparams_open_in_tensorboard(tmp_path, run_cli, tensorboard):
    workdir = tmp_path / "run"
    run_cli(
        "digitjax.train",
        "--config",
        "experiments/smoke.py",
        "--workdir",
        str(workdir),
        "--config.profile_steps=(20, 30)",
    )
    [trace] = (workdir / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb")
    port = tensorboard(workdir / "tensorboard")
    assert _get(port, "/data/plugins_listing")["profile"]["enabled"]
    [run] = _get(port, "/data/plugin/profile/runs")
    assert run == trace.parent.name and "trace_viewer@" in _get(port, f"/data/plugin/profile/run_tools?run={run}")
    [host] = [h["hostname"] for h in _get(port, f"/data/plugin/profile/hosts?run={run}&tag=trace_viewer@")]
    events = _get(port, f"/data/plugin/profile/data?run={run}&tag=trace_viewer@&host={host}")["traceEvents"]
    # The smoke config logs every 5 steps: steps 20-30 are two dispatches of the jitted steps.
    # (Each dispatch shows as a Python event and the C++ call inside it, a fraction of a ms apart.)
    starts = sorted(e["ts"] for e in events if e.get("name") == "PjitFunction(_steps)" and e.get("ph") == "X")
    dispatches = 1 + sum(b - a > 10_000 for a, b in zip(starts, starts[1:]))  # microseconds
    assert dispatches == 2, starts

    experiment = _get(port, "/data/plugin/hparams/experiment", {"experimentName": ""})
    hparams = {h["name"] for h in experiment["hparamInfos"]}
    assert {"model", "learning_rate", "batch_size", "profile_steps", "conv"} <= hparams
    assert {m["name"]["tag"] for m in experiment["metricInfos"]} >= {"test/accuracy"}


def test_a_bad_profile_range_is_a_clear_error(tmp_path, run_cli):
    proc = run_cli(
        "digitjax.train", "--config", "experiments/smoke.py", "--workdir", str(tmp_path / "r"),
        "--config.profile_steps=(30, 20)", check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "profile_steps (30, 20) should be (first, last)" in proc.stderr
    assert "Traceback" not in proc.stderr
