"""The labelled drawings in the app: the store's connection per request, and its JSON API.

POST /api/drawings stores a drawing a person labelled ("Right" or "Wrong: it is 7" on the page) and
answers with its delete token; GET /api/drawings/stats counts them and scores a served run on them;
DELETE /api/drawings/<id> removes one, for the holder of its token or of the OPERATOR_TOKEN. The
store is `digitjax.canvas.drawings` (SQLite, WAL), at the config's DRAWINGS_DB, bounded by the
DRAWINGS_MAX_* quota and the DRAWINGS_RATE_LIMIT per client. Nothing is stored unless a person
presses a button, and nothing about the person is kept.
"""

from __future__ import annotations

import hmac
import os
import secrets
import sqlite3

import numpy as np
from flask import Blueprint, Flask, current_app, g, jsonify, request
from PIL import Image

from digitjax.canvas import drawings, preprocess
from webui import limits
from webui.inputs import BadInput, base64_payload, decode_image, refuse_unknown, run_option

bp = Blueprint("store", __name__)

MIN_SIDE, MAX_SIDE = 28, 1024  # a drawing's PNG, in pixels a side
BATCH = 256  # drawings scored at once by the stats


def init_app(app: Flask) -> None:
    if not app.config.get("DRAWINGS_DB"):
        app.config["DRAWINGS_DB"] = os.path.join(app.instance_path, "drawings.sqlite")
    app.teardown_appcontext(close)
    app.register_blueprint(bp)


def connection() -> sqlite3.Connection:
    """This request's connection to the store: opened on first use, closed when the request ends."""
    if "drawings" not in g:
        g.drawings = drawings.connect(current_app.config["DRAWINGS_DB"])
    return g.drawings


def close(_error=None) -> None:
    conn = g.pop("drawings", None)
    if conn is not None:
        conn.close()


def _png(data) -> tuple[bytes, Image.Image]:
    payload = base64_payload(data)
    limit = current_app.config["MAX_DRAWING_BYTES"]
    if len(payload) > limit:
        raise BadInput(f"The drawing's PNG is {len(payload):,} bytes; at most {limit:,} are kept.", 413)
    image = decode_image(payload, MAX_SIDE * MAX_SIDE)
    if image.format != "PNG":
        raise BadInput(f"A drawing is kept as a PNG; this is a {image.format}.", 415)
    if not (MIN_SIDE <= min(image.size) and max(image.size) <= MAX_SIDE):
        raise BadInput(
            f"The drawing is {image.size[0]}x{image.size[1]} pixels; each side must be {MIN_SIDE} to {MAX_SIDE}."
        )
    return payload, image


def _label(value) -> int:
    """A digit; JSON's 4.0 is the integer 4 (as JSON Schema says), 4.5 is not."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise BadInput(f"`label` must be a digit from 0 to 9; got {value!r}.")
    return value


DRAWING_FIELDS = ("image", "label", "kind", "run")


@bp.post("/api/drawings")
@limits.configured("DRAWINGS_RATE_LIMIT")
def add():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadInput(f'Send JSON: {{"image": PNG data URL, "label": 0-9, "kind": one of {list(drawings.KINDS)}}}.')
    refuse_unknown(body, DRAWING_FIELDS)
    label = _label(body.get("label"))
    kind = body.get("kind", "mouse")
    if kind not in drawings.KINDS:
        raise BadInput(f"`kind` must be one of {list(drawings.KINDS)}; got {kind!r}.")
    payload, image = _png(body.get("image"))
    run = current_app.extensions["digitjax"].named(run_option(body))
    prepared = preprocess.to_mnist(image)
    if prepared.empty:
        raise BadInput("Nothing is drawn: there is no digit to keep.")
    probs_C = run.predict(prepared.image_28x28[None])["probabilities"][0]
    answer = int(probs_C.argmax())
    drawing = drawings.Drawing(
        label, prepared.image_28x28, payload, answer, float(probs_C[answer]), run.name, run.step, kind
    )
    token = secrets.token_urlsafe(32)  # 256 bits; the store keeps only its hash
    c = current_app.config
    try:
        quota = drawings.Quota(c["DRAWINGS_MAX_ROWS"], c["DRAWINGS_MAX_BYTES"])
        drawing_id = drawings.add(connection(), drawing, drawings.token_hash(token), quota)
    except drawings.StoreFull as e:
        raise BadInput(f"The store is full ({e}); nothing was added. Its operator can export and clear it.", 507)
    split = "test" if drawings.split_of(np.asarray([drawing_id]))[0] else "train"
    result = {"id": drawing_id, "label": label, "answer": answer, "confidence": round(float(probs_C[answer]), 5)}
    result |= {"run": run.name, "step": run.step, "kind": kind, "split": split, "delete_token": token}
    return jsonify(result), 201


@bp.get("/api/drawings/stats")
def stats():
    """How many drawings the store holds, and how many of them the run (default: the default) gets right."""
    run = current_app.extensions["digitjax"].named(request.args.get("run"))
    if not os.path.exists(current_app.config["DRAWINGS_DB"]):  # nothing kept yet: no store made for it
        empty = {"count": 0, "by_label": {str(c): 0 for c in range(10)}, "by_kind": {}}
        return jsonify(empty | {"run": run.name, "step": run.step, "correct": 0, "accuracy": None})
    counts = drawings.stats(connection())
    _, inputs, labels = drawings.labelled(connection())
    correct = 0
    for i in range(0, len(labels), BATCH):  # whole batches, so the run compiles one shape, once
        batch = np.zeros((BATCH, 28, 28), np.uint8)
        batch[: len(inputs[i : i + BATCH])] = inputs[i : i + BATCH]
        answers = run.predict(batch)["probabilities"].argmax(-1)[: len(labels[i : i + BATCH])]
        correct += int((answers == labels[i : i + BATCH]).sum())
    accuracy = correct / len(labels) if len(labels) else None
    return jsonify(counts | {"run": run.name, "step": run.step, "correct": correct, "accuracy": accuracy})


def _bearer() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _is_operator(token: str) -> bool:
    operator = current_app.config["OPERATOR_TOKEN"]
    return bool(operator) and hmac.compare_digest(token.encode(), str(operator).encode())


@bp.delete("/api/drawings/<int:drawing_id>")
def remove(drawing_id: int):
    """Deletes a drawing for the holder of its delete token, or the operator. Every refusal reads the
    same whether the id exists or not."""
    token = _bearer()
    if token is None:
        raise BadInput("Deleting a drawing needs its delete token: `Authorization: Bearer <token>`.", 401)
    if drawing_id < 2**63:  # past SQLite's integers: none
        conn = connection()
        if (
            drawings.delete(conn, drawing_id)
            if _is_operator(token)
            else drawings.delete_with_token(conn, drawing_id, token)
        ):
            return jsonify(deleted=drawing_id)
    raise BadInput(f"No drawing {drawing_id} that this token may delete.", 404)
