"""Turning a /api/predict request into an image, or a 4xx that says what was wrong."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from flask import Request
from PIL import Image, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "WEBP")


class BadInput(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def decode_image(payload: bytes, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(payload))  # reads the header only
    except Image.DecompressionBombError as e:
        raise BadInput(f"The image has too many pixels ({e}).", 413)
    except (UnidentifiedImageError, OSError):
        raise BadInput("The upload is not an image: send a PNG, JPEG or WebP file of one digit.", 415)
    if image.format not in FORMATS:
        raise BadInput(f"{image.format} images are not accepted: send PNG, JPEG or WebP.", 415)
    width, height = image.size
    if width * height > max_pixels:  # before decoding, so a decompression bomb costs nothing
        raise BadInput(f"The image is {width}x{height} pixels; at most {max_pixels:,} pixels are accepted.", 413)
    try:
        # verify() checks the whole file (PNG chunk CRCs, truncation) without trusting
        # PIL's LOAD_TRUNCATED_IMAGES, which TFDS switches on process-wide.
        Image.open(io.BytesIO(payload)).verify()
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadInput(f"The image could not be decoded ({e}); it may be truncated or damaged.")
    return image


def _pixels(values) -> np.ndarray:
    if not isinstance(values, list) or len(values) != 784:
        n = len(values) if isinstance(values, list) else type(values).__name__
        raise BadInput(f"`pixels` must be a list of 784 numbers (28x28, row by row); got {n}.")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise BadInput("`pixels` must hold numbers only.")
    # Comparisons, not math.isfinite: NaN fails them, and an int too large for a float compares exactly.
    if not all(0 <= v <= 255 for v in values):
        raise BadInput("`pixels` must be finite numbers from 0 to 255 (NaN, infinities and negatives are refused).")
    return np.asarray(values, np.float32).reshape(28, 28)


JSON_FIELDS = ("image", "pixels", "run", "saliency", "fields", "normalise")
FORM_FIELDS = ("run", "saliency", "fields")  # and the file `image`


def refuse_unknown(names, known: tuple[str, ...]) -> None:
    """A misspelt field is an error that names it, never silently ignored."""
    if unknown := sorted(set(names) - set(known)):
        raise BadInput(f"Unknown field(s) {unknown}: the accepted ones are {list(known)}.")


def _form_options(form) -> dict:
    """A form's strings as the JSON body's values: `saliency` true/false, `fields` comma-separated."""
    refuse_unknown(form.keys(), FORM_FIELDS)
    options = dict(form)
    if "saliency" in options:
        if options["saliency"] not in ("true", "false"):
            raise BadInput("`saliency` must be true or false.")
        options["saliency"] = options["saliency"] == "true"
    if "fields" in options:
        options["fields"] = [f for f in options["fields"].split(",") if f]
    return options


def _json_body(request: Request) -> dict:
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # Python's parser on [[[[...]]]]: not a ValueError, so not silenced
        raise BadInput("The JSON body is nested too deeply.")
    if body is None:
        raise BadInput(
            'Send JSON ({"image": base64 PNG/JPEG or data URL} or {"pixels": [784 numbers]}) '
            "or a multipart form with an `image` file."
        )
    if not isinstance(body, dict):
        raise BadInput("The JSON body must be an object.")
    refuse_unknown(body, JSON_FIELDS)
    if ("image" in body) == ("pixels" in body):
        raise BadInput("The JSON body needs one of `image` (a base64 string or data URL) or `pixels`, not both.")
    return body


def run_option(body: dict) -> str | None:
    """A JSON body's `run`: a run's name, or absent for the default run."""
    if "run" in body and not isinstance(body["run"], str):  # null too: the schema says a string
        raise BadInput("`run` must be a run's name, a string.")
    return body.get("run")


def base64_payload(data) -> bytes:
    """The bytes of a base64 string or a data: URL."""
    if not isinstance(data, str) or not data:
        raise BadInput("`image` must be a non-empty base64 string or data URL.")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("`image` is not valid base64.")


def image_from_request(request: Request, max_pixels: int) -> tuple[Image.Image | np.ndarray, dict]:
    """The image and the options (`run`, `saliency`, `fields`, `normalise`) of a multipart or JSON request."""
    if request.files or request.form:
        upload = request.files.get("image")
        if upload is None:
            raise BadInput("The multipart request has no file field named `image`.")
        refuse_unknown(request.files.keys(), ("image",))
        return decode_image(upload.read(), max_pixels), _form_options(request.form)
    body = _json_body(request)
    options = {k: body[k] for k in ("run", "saliency", "fields", "normalise") if k in body}
    run_option(body)
    if "pixels" in body:
        return _pixels(body["pixels"]), options
    return decode_image(base64_payload(body["image"]), max_pixels), options
