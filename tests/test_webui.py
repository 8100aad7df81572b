"""The Flask app through its test client: every endpoint and every bad input.

`app` serves a run trained on synthetic digits (fast tier); `mnist_app` a small real MNIST run,
for what only a competent model shows (slow)."""

import base64
import io
import threading

import jax
import numpy as np
import pytest
from PIL import Image

from digitjax.canvas import preprocess
from experiments import parity
from webui import create_app, serving

NO_MNIST = {"NEIGHBOURS": 0}  # the fast tier never reaches the real MNIST


@pytest.fixture(scope="module")
def app(synthetic_checkpoints, synthetic_tfds, tmp_path_factory):
    # Neighbours, test digits and reports come from the synthetic digits the run was trained on.
    config = {"CHECKPOINTS": str(synthetic_checkpoints), "WORKDIR": None, "DATA_DIR": str(synthetic_tfds)}
    store = tmp_path_factory.mktemp("store") / "drawings.sqlite"
    return create_app(config | {"IDX_DIR": "/nonexistent", "DRAWINGS_DB": str(store)})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def mnist_app(served_checkpoints, tfds_dir, mnist_dir, tmp_path_factory):
    config = {"CHECKPOINTS": str(served_checkpoints), "WORKDIR": None, "DATA_DIR": str(tfds_dir)}
    store = tmp_path_factory.mktemp("store") / "drawings.sqlite"
    return create_app(config | {"IDX_DIR": str(mnist_dir.parent), "DRAWINGS_DB": str(store)})


@pytest.fixture
def mnist_client(mnist_app):
    return mnist_app.test_client()


def png(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, fmt)
    return buf.getvalue()


def canvas_of(digit_28x28: np.ndarray, scale: int = 8, offset=(30, 50), dark_on_light: bool = True) -> np.ndarray:
    """An MNIST digit drawn large somewhere on a 280x280 canvas."""
    big = np.asarray(Image.fromarray(digit_28x28).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR))
    canvas = np.zeros((280, 280), np.uint8)
    canvas[offset[0] : offset[0] + big.shape[0], offset[1] : offset[1] + big.shape[1]] = big
    return 255 - canvas if dark_on_light else canvas


def test_healthz_model_and_openapi(client):
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json == {"status": "ok", "run": "synthetic", "runs": 1}
    info = client.get("/api/model").json
    assert info["default"] == "synthetic" and info["runs"][0]["model"] == "fast" and info["runs"][0]["step"] == 78
    spec = client.get("/api/openapi.json").json
    assert spec["openapi"].startswith("3.") and "/api/predict" in spec["paths"]


def test_page_serves_canvas_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and b'id="pad"' in page.data and b"app.js" in page.data
    assert b"<script>" not in page.data  # scripts come from static files only
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/app.css").status_code == 200
    assert b'rel="icon"' in page.data
    for path in ("/static/favicon.svg", "/favicon.ico"):
        icon = client.get(path)
        assert icon.status_code == 200 and icon.mimetype == "image/svg+xml" and b"<svg" in icon.data


def test_pixels_are_answered_by_the_served_run(client, digits):
    images, labels = digits(50, seed=11)
    answers = [client.post("/api/predict", json={"pixels": image.ravel().tolist()}).json for image in images]
    assert all(a["run"] == "synthetic" and len(a["probabilities"]) == 10 for a in answers)
    assert all(a["label"] == int(np.argmax(a["probabilities"])) for a in answers)
    assert np.mean([a["label"] == label for a, label in zip(answers, labels)]) > 0.9  # it learnt them; chance 0.1


@pytest.mark.slow
@pytest.mark.parametrize("dark_on_light", [True, False])
def test_predict_multipart_png_either_polarity(mnist_client, test_split, dark_on_light):
    client = mnist_client
    image = canvas_of(test_split.images_NxHxW[0], dark_on_light=dark_on_light)
    r = client.post("/api/predict", data={"image": (io.BytesIO(png(image)), "digit.png")})
    assert r.status_code == 200, r.json
    body = r.json
    assert body["label"] == test_split.labels_N[0] and not body["empty"]
    assert len(body["probabilities"]) == 10 and abs(sum(body["probabilities"]) - 1) < 1e-3
    assert body["confidence"] == max(body["probabilities"])
    assert np.array(body["input"]).shape == (28, 28) and np.array(body["saliency"]).shape == (28, 28)
    assert body["input"] == preprocess.to_mnist(image).image_28x28.tolist()
    assert body["model_ms"] > 0 and body["run"] == "tiny"


@pytest.mark.slow
def test_predict_json_data_url_jpeg_and_pixels(mnist_client, test_split):
    client = mnist_client
    for i, fmt in ((1, "PNG"), (2, "JPEG")):
        data = base64.b64encode(png(canvas_of(test_split.images_NxHxW[i]), fmt)).decode()
        r = client.post("/api/predict", json={"image": f"data:image/{fmt.lower()};base64,{data}", "saliency": False})
        assert r.status_code == 200 and r.json["label"] == test_split.labels_N[i] and r.json["saliency"] is None
    pixels = test_split.images_NxHxW[3].ravel().tolist()
    r = client.post("/api/predict", json={"pixels": pixels, "run": "tiny"})
    assert r.status_code == 200 and r.json["label"] == test_split.labels_N[3]


def test_empty_canvas_predicts_nothing_and_a_dot_is_unsure(client):
    blank = np.full((280, 280), 255, np.uint8)
    r = client.post("/api/predict", data={"image": (io.BytesIO(png(blank)), "blank.png")})
    assert r.status_code == 200 and r.json["empty"] and r.json["label"] is None and r.json["probabilities"] is None
    dot = blank.copy()
    dot[140:145, 140:145] = 0
    r = client.post("/api/predict", data={"image": (io.BytesIO(png(dot)), "dot.png")})
    assert r.json["unsure"] and r.json["reason"] == "this does not look like a digit"


def test_requests_compile_nothing(app, digits):
    # The test client answers on this thread; other apps' background work (an embedding of the
    # training set, a report) may compile on theirs meanwhile.
    compiles, here = [], threading.get_ident()
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, *_a, **_k: (
            compiles.append(event) if "compile" in event and threading.get_ident() == here else None
        )
    )
    client = app.test_client()
    for image in digits(3, seed=5)[0]:
        answer = client.post("/api/predict", data={"image": (io.BytesIO(png(canvas_of(image))), "d.png")})
        assert answer.status_code == 200 and answer.json["saliency"] is not None
    assert compiles == []


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "GIF")
    return buf.getvalue()


def _huge_png() -> bytes:  # 20,000 x 20,000 pixels in a few kB: a decompression bomb
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")
    return buf.getvalue()


NOISE = np.random.default_rng(0).integers(0, 256, (280, 280), dtype=np.uint8)

BAD = [
    ("malformed JSON", dict(data=b"{not json", content_type="application/json"), 400, "Send JSON"),
    ("JSON list", dict(json=[1, 2]), 400, "must be an object"),
    ("no image", dict(json={"run": "tiny"}), 400, "needs one of `image`"),
    ("short pixels", dict(json={"pixels": [0] * 783}), 400, "784 numbers"),
    ("text pixels", dict(json={"pixels": ["a"] * 784}), 400, "numbers only"),
    ("NaN pixels", dict(data=b'{"pixels": [' + b"NaN," * 783 + b"NaN]}", content_type="application/json"), 400, "NaN"),
    ("negative pixels", dict(json={"pixels": [-1] * 784}), 400, "from 0 to 255"),
    ("bad base64", dict(json={"image": "@@@"}), 400, "not valid base64"),
    ("not an image", dict(json={"image": base64.b64encode(b"hello world").decode()}), 415, "not an image"),
    ("GIF", dict(json={"image": base64.b64encode(_gif()).decode()}), 415, "GIF images are not accepted"),
    ("bomb", dict(json={"image": base64.b64encode(_huge_png()).decode()}), 413, "too many pixels"),
    (
        "big image",
        dict(json={"image": base64.b64encode(png(np.zeros((5000, 5000), np.uint8))).decode()}),
        413,
        "5000x5000",
    ),
    (
        "truncated PNG",
        dict(data={"image": (io.BytesIO(png(NOISE)[:2000]), "t.png")}),
        400,
        "decoded",
    ),
    ("multipart without image", dict(data={"other": (io.BytesIO(b"x"), "x.png")}), 400, "no file field named `image`"),
    ("unknown run", dict(json={"pixels": [0] * 784, "run": "../../etc/passwd"}), 404, "Unknown run"),
    ("run not a string", dict(json={"pixels": [0] * 784, "run": 5}), 400, "must be a run's name"),
    ("50 MB body", dict(data=b"0" * (50 * 1024 * 1024), content_type="application/json"), 413, "larger than"),
]


@pytest.mark.parametrize("kwargs, status, phrase", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_json_error(client, kwargs, status, phrase):
    r = client.post("/api/predict", **kwargs)
    assert r.status_code == status, r.data[:300]
    assert r.is_json and r.json["status"] == status and phrase in r.json["error"], r.json


def test_wrong_method_and_unknown_path_are_json(client):
    assert client.get("/api/predict").status_code == 405 and client.get("/api/predict").is_json
    r = client.get("/api/nothing")
    assert r.status_code == 404 and r.is_json and "error" in r.json


def test_no_checkpoint_says_how_to_train(tmp_path):
    app = create_app({"CHECKPOINTS": str(tmp_path), "WORKDIR": None} | NO_MNIST)
    client = app.test_client()
    health = client.get("/healthz")
    assert health.status_code == 503 and "python -m digitjax.train" in health.json["error"]
    assert b"python -m digitjax.train" in client.get("/").data
    r = client.post("/api/predict", json={"pixels": [0] * 784})
    assert r.status_code == 503 and "python -m digitjax.train" in r.json["error"]


def test_workdir_picks_the_default_run(synthetic_checkpoints, tmp_path):
    app = create_app({"CHECKPOINTS": str(tmp_path), "WORKDIR": str(synthetic_checkpoints / "synthetic")} | NO_MNIST)
    assert app.test_client().get("/api/model").json["default"] == "synthetic"
    broken = create_app({"CHECKPOINTS": str(tmp_path), "WORKDIR": str(tmp_path / "missing")} | NO_MNIST)
    assert broken.test_client().get("/healthz").status_code == 503


@pytest.mark.slow
def test_parity_of_canvas_sized_digits_with_plain_evaluation(mnist_app, test_split):
    """A sample of the full check (`python -m experiments.parity`): same accuracy through the API."""
    result = parity.measure(mnist_app, test_split, n=300)
    assert result["api_accuracy"] >= result["plain_accuracy"] - 0.01, result


def test_security_headers_and_no_debug(app, client):
    assert not app.debug and not app.testing  # the app as gunicorn serves it
    for path in ("/", "/static/app.js", "/api/model", "/nowhere"):
        headers = client.get(path).headers
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    page = client.get("/").get_data(as_text=True)
    assert "<script>" not in page and " style=" not in page and " on" not in page.replace(" one", "")


def test_hostile_json_is_a_4xx_not_a_crash(client):
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"pixels": [' + b"9" * 4000 + b"]}"):
        assert client.post("/api/predict", data=body, content_type="application/json").status_code == 400
    huge = [0] * 783 + [10**400]
    assert "0 to 255" in client.post("/api/predict", json={"pixels": huge}).json["error"]


def test_fuzz_no_5xx_json_4xx_and_no_file_read_outside_the_app(app, client, synthetic_checkpoints, synthetic_tfds):
    """A short run of the API fuzz (experiments/fuzz_api.py), watching every file the server opens."""
    import os
    import sys
    import tempfile
    import threading
    from pathlib import Path

    from experiments import fuzz_api

    opened, watching, requests_thread = [], [False], threading.get_ident()

    def audit(event, args):
        # The test client serves in this thread; the app's own background work (the training set's
        # embedding, a report) opens the compilation cache and the dataset in threads of its own.
        if watching[0] and event == "open" and threading.get_ident() == requests_thread:
            if isinstance(args[0], (str, bytes, os.PathLike)):
                opened.append(os.path.realpath(os.fsdecode(args[0])))

    sys.addaudithook(audit)  # cannot be removed; it records only while `watching`

    def send(method, path, headers, body):
        watching[0] = True
        try:
            answer = client.open(path, method=method, headers=headers, data=body)
        finally:
            watching[0] = False
        return answer.status_code, dict(answer.headers), answer.get_data()

    statuses = fuzz_api.fuzz(send, 300)
    assert sum(statuses.values()) >= 300 and {200, 400, 404} <= set(statuses) and len(statuses) >= 4
    store = Path(app.config["DRAWINGS_DB"]).parent
    import jax

    # The compilation cache: a first /api/drawings/stats over kept drawings compiles its batch size.
    cache = jax.config.jax_compilation_cache_dir or sys.prefix
    roots = (Path(app.root_path), synthetic_checkpoints, synthetic_tfds, store, sys.prefix, sys.base_prefix, cache)
    allowed = [str(Path(p).resolve()) for p in roots]
    # Werkzeug spools a large multipart upload to an anonymous file: an open of the temp dir itself.
    expected = {"/dev/urandom", os.path.realpath(tempfile.gettempdir())}
    outside = {p for p in opened if not any(p.startswith(root + os.sep) for root in allowed) and p not in expected}
    assert not outside, sorted(outside)[:10]


def _decoded(layer: dict) -> np.ndarray:
    levels = np.frombuffer(base64.b64decode(layer["levels"]), np.uint8).reshape(layer["shape"])
    return layer["low"] + levels.astype(np.float64) / 255 * (layer["high"] - layer["low"])


def test_layers_in_the_answer_are_the_models_own_values(app, client, digits):
    """The activations sent are the served model's intermediate values for the same input, to
    within the 8-bit levels they travel in; neighbours are its nearest training digits."""
    from digitjax import layers
    from digitjax.runs import checkpoint

    run = app.extensions["digitjax"].runs["synthetic"]
    model = checkpoint.load_for_inference(run.workdir).model
    image = digits(1, seed=21)[0][0]
    body = {"pixels": image.ravel().tolist(), "fields": ["layers", "neighbours"]}
    answer = client.post("/api/predict", json=body).json
    assert answer["saliency"] is None  # only what was asked for
    prepared = preprocess.to_mnist(image.astype(np.float32)).image_28x28
    logits, recorded = layers.record(model, jax.numpy.asarray(prepared[None] / 255.0, np.float32)[..., None])
    assert [layer["name"] for layer in answer["layers"]] == [name for name, _, _ in recorded]
    for layer, (name, value, _) in zip(answer["layers"], recorded):
        value = np.asarray(value[0])
        assert layer["shape"] == list(value.shape)
        step = (layer["high"] - layer["low"]) / 255
        assert layer["low"] == pytest.approx(value.min(), abs=1e-5) and layer["high"] == pytest.approx(
            value.max(), rel=1e-5
        )
        np.testing.assert_allclose(_decoded(layer), value, atol=step / 2 + 1e-5, err_msg=name)
    assert answer["label"] == int(np.argmax(logits))
    neighbours = answer["neighbours"]
    assert len(neighbours) == 8 and [n["distance"] for n in neighbours] == sorted(n["distance"] for n in neighbours)
    training = app.extensions["digitjax.datasets"].split("mnist", "train")
    for n in neighbours:
        assert n["label"] == training.labels_N[n["index"]]
        shown = np.frombuffer(base64.b64decode(n["pixels"]), np.uint8).reshape(28, 28)
        np.testing.assert_array_equal(shown, training.images_NxHxW[n["index"]])
    # The synthetic glyphs are learnt: the nearest training digits mostly share the answer.
    assert sum(n["label"] == answer["label"] for n in neighbours) >= 6


def test_fields_are_checked_and_plain_clients_get_only_the_answer(client, digits):
    pixels = digits(1, seed=3)[0][0].ravel().tolist()
    plain = client.post("/api/predict", json={"pixels": pixels, "fields": []}).json
    assert plain["saliency"] is None and "layers" not in plain and "neighbours" not in plain
    default = client.post("/api/predict", json={"pixels": pixels}).json
    assert default["saliency"] is not None and "layers" not in default  # as before fields existed
    form = client.post(
        "/api/predict",
        data={"image": (io.BytesIO(png(canvas_of(digits(1, seed=3)[0][0]))), "d.png"), "fields": "layers"},
    ).json
    assert "layers" in form and "neighbours" not in form and form["saliency"] is None
    bad = client.post("/api/predict", json={"pixels": pixels, "fields": ["everything"]})
    assert bad.status_code == 400 and "fields" in bad.json["error"]


def test_run_page_data_report_made_once_in_the_background(app, client):
    """GET /api/runs/NAME: the curves at once; the report is made in the background (other requests
    are answered meanwhile), once, then served from report/report.json with its mistakes."""
    from digitjax.runs import metrics

    run = app.extensions["digitjax"].runs["synthetic"]
    report_file = run.workdir / "report" / "report.json"
    report_file.unlink(missing_ok=True)
    first = client.get("/api/runs/synthetic")
    assert first.status_code == 200 and first.json["report_status"] == "making" and first.json["report"] is None
    assert len(first.json["curves"]) == len(metrics.read(run.workdir)) > 0
    assert client.post("/api/predict", json={"pixels": [0] * 784}).status_code == 200  # not blocked
    assert client.get("/api/runs/synthetic").json["report_status"] in ("making", "ready")
    reports = app.extensions["digitjax.reports"]
    reports._making["synthetic"].result(timeout=120)
    made = report_file.stat().st_mtime_ns
    info = client.get("/api/runs/synthetic").json
    assert info["report_status"] == "ready" and info["report"]["step"] == run.step
    assert sum(map(sum, info["report"]["confusion_matrix"])) == 500
    assert len(info["mistakes"]) == min(info["report"]["test_errors"], app.config["MISTAKES_SHOWN"])
    test = app.extensions["digitjax.datasets"].split("mnist", "test")
    for m in info["mistakes"]:
        assert m["label"] == test.labels_N[m["index"]] != m["predicted"]
    client.get("/api/runs/synthetic")
    assert report_file.stat().st_mtime_ns == made  # read, not made again
    digit = client.get(f"/api/digits/test/{info['mistakes'][0]['index'] if info['mistakes'] else 0}").json
    assert digit["label"] == test.labels_N[digit["index"]] and len(digit["pixels"]) == 784


def test_run_pages_and_kernels(client, app):
    page = client.get("/runs/synthetic")
    assert page.status_code == 200 and b'data-run="synthetic"' in page.data and b"runs.js" in page.data
    both = client.get("/runs/synthetic/vs/synthetic")
    assert both.status_code == 200 and both.data.count(b'class="run"') == 2
    missing = client.get("/runs/nope")
    assert missing.status_code == 404 and b"No run named nope" in missing.data
    run = app.extensions["digitjax"].runs["synthetic"]
    kernel = client.get("/api/runs/synthetic/layers/conv2/kernel").json
    expected = next(s.kernel_HWIO for s in run.layers if s.name == "conv2")
    assert kernel["shape"] == list(expected.shape)
    np.testing.assert_allclose(_decoded(kernel), expected, atol=(kernel["high"] - kernel["low"]) / 510 + 1e-6)
    assert client.get("/api/runs/synthetic/layers/pool1/kernel").status_code == 404  # pooled: no kernel


def _validate(spec: dict, path: str, method: str, response) -> None:
    from openapi_schema_validator import OAS31Validator

    declared = spec["paths"][path][method]["responses"]
    assert str(response.status_code) in declared, f"{method} {path}: {response.status_code} is not in the spec"
    schema = declared[str(response.status_code)]["content"]["application/json"]["schema"]
    OAS31Validator({**schema, "components": spec["components"]}).validate(response.json)


def test_openapi_describes_every_real_response(app, client, digits):
    """The spec is valid OpenAPI 3.1, and real answers of every path validate against it exactly
    (no field missing, none undeclared)."""
    from openapi_spec_validator import validate

    spec = client.get("/api/openapi.json").json
    validate(spec)
    pixels = digits(1, seed=8)[0][0].ravel().tolist()
    drawn = "data:image/png;base64," + base64.b64encode(png(canvas_of(digits(1, seed=8)[0][0]))).decode()
    reports = app.extensions["digitjax.reports"]
    client.get("/api/runs/synthetic")
    if "synthetic" in reports._making:
        reports._making["synthetic"].result(timeout=120)
    calls = [
        ("/healthz", "get", "/healthz", {}),
        ("/api/model", "get", "/api/model", {}),
        ("/api/predict", "post", "/api/predict", {"json": {"pixels": pixels}}),
        ("/api/predict", "post", "/api/predict", {"json": {"pixels": pixels, "fields": []}}),
        ("/api/predict", "post", "/api/predict", {"json": {"pixels": pixels, "fields": list(serving.FIELDS)}}),
        ("/api/predict", "post", "/api/predict", {"json": {"pixels": [0] * 784, "fields": ["layers"]}}),
        ("/api/predict", "post", "/api/predict", {"json": {"pixels": pixels, "run": "nope"}}),
        ("/api/predict", "post", "/api/predict", {"json": {"pixels": [1]}}),
        ("/api/runs/{name}", "get", "/api/runs/synthetic", {}),
        ("/api/runs/{name}", "get", "/api/runs/nope", {}),
        ("/api/runs/{name}/layers/{layer}/kernel", "get", "/api/runs/synthetic/layers/conv1/kernel", {}),
        ("/api/runs/{name}/layers/{layer}/kernel", "get", "/api/runs/synthetic/layers/nope/kernel", {}),
        ("/api/digits/test/{index}", "get", "/api/digits/test/7", {}),
        ("/api/digits/test/{index}", "get", "/api/digits/test/99999", {}),
        ("/api/drawings/stats", "get", "/api/drawings/stats", {}),
        ("/api/drawings", "post", "/api/drawings", {"json": {"image": drawn, "label": 4, "kind": "pen"}}),
        ("/api/drawings", "post", "/api/drawings", {"json": {"image": drawn, "label": 11}}),
        ("/api/drawings/stats", "get", "/api/drawings/stats?run=synthetic", {}),
        ("/api/drawings/{id}", "delete", "/api/drawings/1", {}),
        ("/api/drawings/{id}", "delete", "/api/drawings/1", {}),
    ]
    for path, method, url, kwargs in calls:
        _validate(spec, path, method, client.open(url, method=method.upper(), **kwargs))
    assert {path for path, *_ in calls} == set(spec["paths"]), "every path is exercised"
    statuses = {(p, r) for p, _, u, k in calls for r in [client.open(u, method=_.upper(), **k).status_code]}
    assert {200, 400, 404} <= {s for _, s in statuses}


def test_no_training_data_means_no_neighbours_said_plainly(synthetic_checkpoints, tmp_path, digits):
    app = create_app(
        {"CHECKPOINTS": str(synthetic_checkpoints), "WORKDIR": None, "DATA_DIR": str(tmp_path)}
        | {"IDX_DIR": str(tmp_path / "none")}
    )
    client = app.test_client()
    run = client.get("/api/model").json["runs"][0]
    assert run["neighbours"] is False and "mnist could not be loaded" in run["neighbours_problem"]
    answer = client.post("/api/predict", json={"pixels": [0] * 784, "fields": ["neighbours"]})
    assert answer.status_code == 409 and "nearest training digits" in answer.json["error"]
    layers_only = client.post(
        "/api/predict", json={"pixels": digits(1, seed=1)[0][0].ravel().tolist(), "fields": ["layers"]}
    )
    assert layers_only.status_code == 200 and layers_only.json["layers"]


@pytest.mark.slow
def test_nearest_training_digits_mostly_share_the_answer(mnist_app, test_split):
    """The sanity figure of experiments.neighbour_agreement, on the small served run."""
    from experiments import neighbour_agreement

    runs = mnist_app.extensions["digitjax"]
    figures = neighbour_agreement.measure(runs.runs["tiny"], test_split, 300)
    assert figures["k"] == 8 and figures["majority_is_answer"] > 0.9, figures


def test_settings_come_from_the_instance_folder_then_the_environment(tmp_path, monkeypatch):
    """Defaults, then instance/config.py, then DIGITJAX_<KEY> (parsed as JSON), then create_app's own."""
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "config.py").write_text("UNSURE_BELOW = 0.5\nMISTAKES_SHOWN = 3\n")
    monkeypatch.setenv("DIGITJAX_MISTAKES_SHOWN", "7")
    monkeypatch.setenv("DIGITJAX_CHECKPOINTS", str(tmp_path / "runs"))
    monkeypatch.setenv("DIGITJAX_NEIGHBOURS", "5")
    app = create_app({"WORKDIR": None} | NO_MNIST, instance_path=str(instance))
    c = app.config
    assert c["UNSURE_BELOW"] == 0.5 and c["MISTAKES_SHOWN"] == 7 and c["CHECKPOINTS"] == str(tmp_path / "runs")
    assert c["NEIGHBOURS"] == 0 and c["DRAWINGS_DB"] == str(instance / "drawings.sqlite")
    assert c["MAX_CONTENT_LENGTH"] == 8 * 1024 * 1024  # untouched defaults stay
