"""The page, the JSON API under /api/, and /healthz."""

from __future__ import annotations

import base64
import io

import numpy as np
from flask import Blueprint, current_app, jsonify, render_template, request
from PIL import Image
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from digitjax.canvas import preprocess
from webui import limits, openapi, reports, serving
from webui.inputs import BadInput, image_from_request
from webui.serving import Run, Runs

bp = Blueprint("ui", __name__)

# The page runs only its own script and style (no inline code, no other origin), cannot be framed,
# and no response is ever sniffed into another type.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


@bp.after_app_request
def security_headers(response):
    response.headers.update(SECURITY_HEADERS)
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"  # answers about drawings are not kept by caches
    return response


def _runs() -> Runs:
    return current_app.extensions["digitjax"]


def _error(message: str, status: int):
    return jsonify(error=message, status=status), status


@bp.app_errorhandler(HTTPException)
def http_error(e: HTTPException):
    messages = {
        413: f"The request is larger than {current_app.config['MAX_CONTENT_LENGTH']:,} bytes.",
        429: f"Too many requests from this address (the limit is {e.description}); try again after Retry-After.",
    }
    response = _error(messages.get(e.code, e.description), e.code)
    if isinstance(e, MethodNotAllowed) and e.valid_methods:  # HTTP requires it with every 405
        response[0].headers["Allow"] = ", ".join(sorted(e.valid_methods))
    return response


@bp.app_errorhandler(BadInput)
def bad_input(e: BadInput):
    response = _error(str(e), e.status)
    if e.status == 401:  # HTTP requires the scheme that would do with every 401
        response[0].headers["WWW-Authenticate"] = 'Bearer realm="drawings"'
    return response


@bp.app_errorhandler(Exception)
def unexpected_error(e: Exception):
    current_app.logger.exception("unexpected error in %s", request.path)
    return _error("Internal error; the server log has the details.", 500)


@bp.get("/")
def index():
    return render_template("index.html", problem=_runs().problem)


@bp.get("/favicon.ico")
def favicon():
    """For clients that ask the default path; the page itself links the SVG."""
    return current_app.send_static_file("favicon.svg")


@bp.get("/healthz")
def healthz():
    runs = _runs()
    if runs.problem:
        return jsonify(status="unavailable", error=runs.problem), 503
    return jsonify(status="ok", run=runs.default, runs=len(runs.runs))


@bp.get("/api/model")
def model_info():
    runs = _runs()
    return jsonify(default=runs.default, runs=[r.describe() for r in runs.runs.values()], problem=runs.problem)


@bp.get("/api/openapi.json")
def openapi_spec():
    return jsonify(openapi.SPEC)


def _fields(options: dict) -> tuple[str, ...]:
    """The optional parts asked for: `fields`, else the older `saliency` flag alone (default on)."""
    if not isinstance(options.get("saliency", True), bool):  # 0 == False, yet not a JSON boolean
        raise BadInput("`saliency` must be true or false.")
    if "fields" not in options:
        return ("saliency",) if options.get("saliency", True) else ()
    fields = options["fields"]
    if not isinstance(fields, list) or not all(isinstance(f, str) and f in serving.FIELDS for f in fields):
        raise BadInput(f"`fields` must be a list of any of {list(serving.FIELDS)}; got {fields!r}.")
    return tuple(dict.fromkeys(fields))


def _levels(levels: np.ndarray, low: float, high: float, shape: tuple[int, ...]) -> dict:
    return {"shape": list(shape), "low": float(low), "high": float(high), "levels": base64.b64encode(levels).decode()}


def _png(image_HxW: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image_HxW, np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _insight(run: Run, out: dict) -> dict:
    """The layers and neighbours of an answer, as the API sends them."""
    result = {}
    if "levels" in out:
        sizes = [int(np.prod(layer.shape)) for layer in run.layers]
        chunks = np.split(out["levels"], np.cumsum(sizes)[:-1])
        result["layers"] = [
            {"name": layer.name, "kind": layer.kind, **_levels(levels, low, high, layer.shape)}
            for layer, levels, (low, high) in zip(run.layers, chunks, out["ranges"])
        ]
    if "neighbours" in out:
        index, (indices_K, distances_K) = run.predict.index, out["neighbours"]
        result["neighbours"] = [
            {
                "index": int(i),
                "label": int(index.labels_N[i]),
                "distance": round(float(d), 4),
                "pixels": base64.b64encode(index.images_NxHxW[i]).decode(),
            }
            for i, d in zip(indices_K, distances_K)
        ]
    return result


@bp.post("/api/predict")
@limits.configured("PREDICT_RATE_LIMIT")
def predict():
    image, options = image_from_request(request, current_app.config["MAX_IMAGE_PIXELS"])
    run, fields = _runs().named(options.get("run")), _fields(options)
    if "neighbours" in fields and run.neighbours_problem:
        raise BadInput(f"Run {run.name} cannot show its nearest training digits: {run.neighbours_problem}.", 409)
    normalise = options.get("normalise", True)
    if not isinstance(normalise, bool) or (normalise is False and not isinstance(image, np.ndarray)):
        raise BadInput("`normalise` must be true or false, and false only with `pixels` (already MNIST-like).")
    try:
        prepared = preprocess.to_mnist(image) if normalise else preprocess.as_is(image)
    except ValueError as e:
        raise BadInput(f"The image cannot be used: {e}.")
    result = {"run": run.name, "step": run.step, "empty": prepared.empty, "input": prepared.image_28x28.tolist()}
    nothing = {"label": None, "probabilities": None, "confidence": None, "saliency": None, "model_ms": 0.0}
    if prepared.empty:
        return jsonify(result | nothing | {"unsure": True, "reason": "nothing drawn"})
    out, model_ms = run.timed_predict(prepared.image_28x28, fields)
    probs_C = out["probabilities"]
    confidence = float(probs_C.max())
    reason = None
    if not prepared.digit_like:
        reason = "this does not look like a digit"
    elif confidence < current_app.config["UNSURE_BELOW"]:
        reason = "the model is not confident"
    return jsonify(
        result
        | {
            "label": int(probs_C.argmax()),
            "probabilities": [round(float(p), 5) for p in probs_C],
            "confidence": round(confidence, 5),
            "unsure": reason is not None,
            "reason": reason,
            "saliency": np.round(out["saliency"], 3).tolist() if "saliency" in out else None,
            "model_ms": round(model_ms, 3),
        }
        | _insight(run, out)
    )


@bp.get("/api/runs/<name>/layers/<layer>/kernel")
def kernel(name: str, layer: str):
    run = _runs().named(name)
    found = next((s for s in run.layers if s.name == layer), None)
    if found is None or found.kernel_HWIO is None:
        raise BadInput(f"Run {name} has no layer {layer!r} made by a kernel; GET /api/model lists its layers.", 404)
    k = found.kernel_HWIO
    levels, low, high = (np.asarray(a[0]) for a in serving.quantize(k.reshape(1, -1)))
    return jsonify({"run": run.name, "layer": layer, **_levels(levels, low, high, k.shape)})


@bp.get("/api/runs/<name>")
def run_info(name: str):
    run = _runs().named(name)
    report, status, problem = current_app.extensions["digitjax.reports"].get(run)
    mistakes = None
    if report is not None:
        test = current_app.extensions["digitjax.datasets"].split(run.dataset, "test")
        shown = report["mistakes"][: current_app.config["MISTAKES_SHOWN"]]
        mistakes = [m | {"image": _png(test.images_NxHxW[m["index"]]) if test else None} for m in shown]
        report = {k: v for k, v in report.items() if k != "mistakes"}
    return jsonify(
        run=run.describe(),
        curves=reports.curves(run),
        report=report,
        report_status=status,
        report_problem=problem,
        mistakes=mistakes,
    )


@bp.get("/api/digits/test/<int:index>")
def test_digit(index: int):
    """One test image of a run's dataset (`?run=`, default the default run's) as the model reads
    it, for loading a run's mistake into the canvas."""
    run = _runs().named(request.args.get("run"))
    datasets = current_app.extensions["digitjax.datasets"]
    test = datasets.split(run.dataset, "test")
    if test is None:
        raise BadInput(datasets.problem, 503)
    if not 0 <= index < len(test.labels_N):
        raise BadInput(f"The test split has images 0 to {len(test.labels_N) - 1}; there is no {index}.", 404)
    return jsonify(index=index, label=int(test.labels_N[index]), pixels=test.images_NxHxW[index].ravel().tolist())


@bp.get("/runs/<name>")
@bp.get("/runs/<name>/vs/<other>")
def run_page(name: str, other: str | None = None):
    names = [n for n in (name, other) if n]
    runs = _runs()
    unknown = [n for n in names if n not in runs.runs]
    if unknown:
        return render_template("runs.html", names=[], unknown=unknown, served=sorted(runs.runs)), 404
    return render_template("runs.html", names=names, unknown=[], served=sorted(runs.runs))
