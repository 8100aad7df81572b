"""The page, the JSON API under /api/, and /healthz."""

from __future__ import annotations

import numpy as np
from flask import Blueprint, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from digitjax import preprocess
from webui import openapi
from webui.inputs import BadInput, image_from_request
from webui.serving import Runs

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
    messages = {413: f"The request is larger than {current_app.config['MAX_CONTENT_LENGTH']:,} bytes."}
    return _error(messages.get(e.code, e.description), e.code)


@bp.app_errorhandler(BadInput)
def bad_input(e: BadInput):
    return _error(str(e), e.status)


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


@bp.post("/api/predict")
def predict():
    runs = _runs()
    if runs.problem:
        return _error(runs.problem, 503)
    image, options = image_from_request(request, current_app.config["MAX_IMAGE_PIXELS"])
    name = options.get("run") or runs.default
    if not isinstance(name, str) or name not in runs.runs:
        raise BadInput(f"Unknown run {name!r}; GET /api/model lists the runs served here.", 404)
    want_saliency = options.get("saliency", True) not in (False, "false", "0")
    run = runs.runs[name]
    try:
        prepared = preprocess.to_mnist(image)
    except ValueError as e:
        raise BadInput(f"The image cannot be used: {e}.")
    result = {"run": run.name, "step": run.step, "empty": prepared.empty, "input": prepared.image_28x28.tolist()}
    if prepared.empty:
        return jsonify(
            result
            | {
                "label": None,
                "probabilities": None,
                "confidence": None,
                "unsure": True,
                "reason": "nothing drawn",
                "saliency": None,
                "model_ms": 0.0,
            }
        )
    probs_C, saliency_HxW, model_ms = run.timed_predict(prepared.image_28x28)
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
            "saliency": np.round(saliency_HxW, 3).tolist() if want_saliency else None,
            "model_ms": round(model_ms, 3),
        }
    )
