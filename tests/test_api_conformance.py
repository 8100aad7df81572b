"""The JSON API against Schemathesis, the outside world's OpenAPI tester: requests generated from
the app's own /api/openapi.json, positive and negative, sent to a real HTTP server, every check on."""

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from werkzeug.serving import WSGIRequestHandler, make_server

from webui import create_app, limits, openapi


class Quiet(WSGIRequestHandler):
    def log_request(self, *args):  # thousands of generated requests: Schemathesis reports what matters
        pass


@pytest.fixture(scope="module")
def base_url(synthetic_checkpoints, synthetic_tfds, tmp_path_factory):
    store = tmp_path_factory.mktemp("conformance") / "drawings.sqlite"
    config = {"CHECKPOINTS": str(synthetic_checkpoints), "WORKDIR": None, "DATA_DIR": str(synthetic_tfds)}
    app = create_app(config | {"IDX_DIR": "/nonexistent", "DRAWINGS_DB": str(store)})
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()


def schemathesis(base_url: str, out: Path, *args: str) -> tuple[int, str, dict]:
    """`st run` with every check; its exit status, its output, and its JSON report."""
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    report = out / "schemathesis.json"
    config = Path(__file__).parent / "schemathesis.toml"
    cmd = [st, "--config-file", str(config), "run", f"{base_url}/api/openapi.json", "--checks", "all", "--no-color"]
    cmd += ["--workers", "1"]
    cmd += ["--generation-database", "none", "--report", "json", "--report-json-path", str(report), *args]
    # In `out`: Schemathesis keeps what it found under .schemathesis/ in its working folder.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=out)
    return proc.returncode, proc.stdout + proc.stderr, json.loads(report.read_text()) if report.exists() else {}


def assert_clean(report: dict, output: str, at_least: int) -> None:
    """Every operation tested in every phase, at least `at_least` cases, and no failure or error."""
    summary = {k: report.get(k) for k in ("operations", "test_cases", "phases", "running_time")}
    print(json.dumps(summary))
    assert report["exit_code"] == 0 and report["complete"], output[-6000:]
    assert report["operations"]["tested"] == report["operations"]["total"] == len(openapi.SPEC["paths"])
    assert all(phase["status"] == "success" for phase in report["phases"].values()), report["phases"]
    assert report["test_cases"]["generated"] >= at_least
    assert report["failures"] == [] and report["errors"] == [] and report["test_cases"]["with_failures"] == 0


def test_schemathesis_finds_nothing_in_a_short_run(base_url, tmp_path):
    rc, output, report = schemathesis(base_url, tmp_path, "--max-examples", "8", "--seed", "1")
    assert rc == 0, output[-6000:]
    assert_clean(report, output, at_least=200)


@pytest.mark.slow
def test_schemathesis_finds_nothing_in_a_long_run(base_url, tmp_path):
    rc, output, report = schemathesis(base_url, tmp_path, "--max-examples", "300", "--seed", "2")
    print(output[output.find("SUMMARY") :])
    assert rc == 0, output[-6000:]
    assert_clean(report, output, at_least=2000)


def test_every_405_says_which_methods_are_allowed(base_url):
    """HTTP requires `Allow` with a 405 (RFC 9110); the answer is still the API's JSON error."""
    for method, path, allowed in [
        ("GET", "/api/predict", {"POST", "OPTIONS"}),
        ("PUT", "/api/drawings/1", {"DELETE", "OPTIONS"}),
        ("POST", "/api/model", {"GET", "HEAD", "OPTIONS"}),
    ]:
        response = requests.request(method, base_url + path, timeout=30)
        assert response.status_code == 405 and response.json()["status"] == 405
        assert set(response.headers["Allow"].split(", ")) == allowed


@pytest.mark.parametrize(
    "body, says",
    [
        ({}, "one of `image`"),
        ({"pixels": [0] * 784, "image": "YWJj"}, "not both"),
        ({"pixels": [0] * 784, "saliancy": False}, "saliancy"),  # a typo is named, not ignored
        ({"pixels": [0] * 784, "saliency": 0}, "saliency"),
        ({"pixels": [0] * 784, "normalise": 1}, "normalise"),
        ({"pixels": [0] * 784, "run": 3}, "run"),
        ({"pixels": [0] * 784, "run": None}, "run"),
        ({"image": "not base64!"}, "base64"),
    ],
)
def test_predict_refuses_what_its_schema_refuses(base_url, body, says):
    from openapi_schema_validator import OAS31Validator

    schema = {**openapi.SPEC["components"]["schemas"]["PredictRequest"], "components": openapi.SPEC["components"]}
    assert not OAS31Validator(schema).is_valid(body)
    response = requests.post(base_url + "/api/predict", json=body, timeout=30)
    assert response.status_code == 400 and says in response.json()["error"]


def test_a_label_of_4_point_0_is_the_digit_4_as_json_schema_says(base_url):
    limits.limiter.reset()  # Schemathesis stored drawings from this address too
    drawing = openapi.SPEC["components"]["schemas"]["DrawingRequest"]["examples"][0]
    kept = requests.post(base_url + "/api/drawings", json=drawing | {"label": 4.0}, timeout=30)
    assert kept.status_code == 201 and kept.json()["label"] == 4
    half = requests.post(base_url + "/api/drawings", json=drawing | {"label": 4.5}, timeout=30)
    unknown = requests.post(base_url + "/api/drawings", json=drawing | {"colour": "red"}, timeout=30)
    assert half.status_code == unknown.status_code == 400 and "colour" in unknown.json()["error"]
