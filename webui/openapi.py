"""The API's OpenAPI 3.1 description, served at /api/openapi.json."""

import base64
import io

from PIL import Image, ImageDraw


def _example_drawing() -> str:
    """A drawn 1 as the page sends it: black ink on white, a PNG data URL."""
    image = Image.new("L", (140, 140), 255)
    ImageDraw.Draw(image).line([(75, 20), (65, 120)], fill=0, width=12)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


_EXAMPLE_DRAWING = _example_drawing()

_ERROR = {
    "description": "What was wrong",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_LIMITED = {
    "description": "Too many requests from this address; `Retry-After` says when to try again",
    "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 0}, "description": "seconds"}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_GRID = {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 28, "maxItems": 28}}


def _json(schema: str, description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _object(properties: dict, optional: tuple[str, ...] = ()) -> dict:
    """An object with exactly these properties: all required but `optional`, no others."""
    required = [k for k in properties if k not in optional]
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


_NULLABLE_NUMBER = {"type": ["number", "null"]}
# Base64 as the server decodes it (padding included), bare or as a data: URL. Whether the bytes are an
# image only decoding can tell: that is a 415, not a 400.
_BASE64 = r"^(data:[^,]*,)?([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2}==)$"
_RUN_FIELD = {"type": "string", "description": "a run name from GET /api/model; default: the default run"}
_RUN_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_LEVELS = {
    "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
    "low": {"type": "number", "description": "the value level 0 stands for"},
    "high": {"type": "number", "description": "the value level 255 stands for"},
    "levels": {
        "type": "string",
        "contentEncoding": "base64",
        "description": "uint8 levels, row-major in `shape` (feature maps HxWxC, kernels HxWxInxOut)",
    },
}
_CURVE_POINT = _object(
    {
        "step": {"type": "integer"},
        "split": {"type": "string", "enum": ["train", "val", "test", "drawings"]},
        "loss": _NULLABLE_NUMBER,
        "accuracy": _NULLABLE_NUMBER,
        "train_seconds": {"type": "number"},
    },
    optional=("loss", "accuracy", "train_seconds"),
)

SPEC = {
    "openapi": "3.1.0",
    "info": {
        "title": "digitjax",
        "version": "0.2.0",
        "description": "Handwritten digit recognition: send an image of one digit, get the model's answer, "
        "and if asked, what each layer made of it and the training digits nearest to it.",
    },
    "paths": {
        "/api/predict": {
            "post": {
                "operationId": "predict",
                "summary": "Predict the digit in an image (drawn, scanned or photographed; either polarity).",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["image"],
                                "properties": {
                                    "image": {"type": "string", "format": "binary"},
                                    "run": _RUN_FIELD,
                                    "saliency": {"type": "string", "enum": ["true", "false"]},
                                    "fields": {
                                        "type": "string",
                                        "pattern": "^((saliency|layers|neighbours)(,|$))*$",
                                        "description": "comma-separated, as in JSON",
                                    },
                                },
                                "additionalProperties": False,
                            }
                        },
                    },
                },
                "responses": {
                    "200": _json("Prediction", "The prediction, or empty: true when nothing was drawn"),
                    "400": _ERROR,
                    "404": _ERROR,
                    "409": _ERROR,
                    "413": _ERROR,
                    "415": _ERROR,
                    "429": _LIMITED,
                    "503": _ERROR,
                },
            }
        },
        "/api/model": {
            "get": {
                "operationId": "listRuns",
                "summary": "The runs served here and the default one.",
                "responses": {
                    "200": {
                        **_json("Runs", "The served runs"),
                        "links": {
                            "run": {"operationId": "getRun", "parameters": {"name": "$response.body#/runs/0/name"}},
                            "kernel": {
                                "operationId": "getKernel",
                                "parameters": {
                                    "name": "$response.body#/runs/0/name",
                                    "layer": "$response.body#/runs/0/layers/0/name",
                                },
                            },
                        },
                    }
                },
            }
        },
        "/api/runs/{name}": {
            "get": {
                "operationId": "getRun",
                "summary": "A run's learning curves and evaluation report (made in the background when missing).",
                "parameters": [_RUN_NAME],
                "responses": {"200": _json("RunReport", "Curves, and the report once made"), "404": _ERROR},
            }
        },
        "/api/runs/{name}/layers/{layer}/kernel": {
            "get": {
                "operationId": "getKernel",
                "summary": "The convolution kernel that made a layer's feature maps.",
                "parameters": [
                    _RUN_NAME,
                    {"name": "layer", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "responses": {"200": _json("Kernel", "The kernel, HxWxInxOut"), "404": _ERROR},
            }
        },
        "/api/digits/test/{index}": {
            "get": {
                "operationId": "getTestDigit",
                "summary": "One test image of a run's dataset, e.g. a run's mistake to draw beside.",
                "parameters": [
                    {"name": "index", "in": "path", "required": True, "schema": {"type": "integer"}},
                    {"name": "run", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {"200": _json("TestDigit", "The digit"), "404": _ERROR, "503": _ERROR},
            }
        },
        "/api/drawings": {
            "post": {
                "operationId": "addDrawing",
                "summary": "Keep a drawing a person labelled: the model's answer and the run are stored with it.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DrawingRequest"}}},
                },
                "responses": {
                    "201": {
                        **_json("StoredDrawing", "Stored"),
                        "links": {
                            "delete": {"operationId": "deleteDrawing", "parameters": {"id": "$response.body#/id"}}
                        },
                    },
                    "400": _ERROR,
                    "404": _ERROR,
                    "413": _ERROR,
                    "415": _ERROR,
                    "429": _LIMITED,
                    "503": _ERROR,
                    "507": {**_ERROR, "description": "The store holds its quota of drawings; nothing was added"},
                },
            }
        },
        "/api/drawings/stats": {
            "get": {
                "operationId": "drawingStats",
                "summary": "How many drawings are kept, by label and kind, and how many a run gets right.",
                "parameters": [{"name": "run", "in": "query", "required": False, "schema": {"type": "string"}}],
                "responses": {"200": _json("DrawingStats", "The counts"), "404": _ERROR, "503": _ERROR},
            }
        },
        "/api/drawings/{id}": {
            "delete": {
                "operationId": "deleteDrawing",
                "summary": "Delete a kept drawing: with its delete token (from POST /api/drawings) or the operator's.",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "security": [{"deleteToken": []}],
                "responses": {
                    "200": _json("Deleted", "Deleted"),
                    "401": {
                        **_ERROR,
                        "description": "No bearer token was given",
                        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                    },
                    "404": {**_ERROR, "description": "No drawing of this id that this token may delete"},
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness: 200 when a model is served, 503 when none is.",
                "responses": {"200": _json("Health", "Serving"), "503": _json("Health", "Nothing to serve, and why")},
            }
        },
    },
    "components": {
        "securitySchemes": {
            "deleteToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "A drawing's `delete_token`, or the app's OPERATOR_TOKEN",
            }
        },
        "schemas": {
            "PredictRequest": {
                "type": "object",
                "description": "One of `image` or `pixels`; no other fields than these.",
                "examples": [{"image": _EXAMPLE_DRAWING, "fields": ["saliency", "layers"]}],
                "properties": {
                    "image": {
                        "type": "string",
                        "pattern": _BASE64,
                        "description": "PNG, JPEG or WebP, base64 or a data: URL",
                    },
                    "pixels": {
                        "type": "array",
                        "items": {"type": "number", "minimum": 0, "maximum": 255},
                        "minItems": 784,
                        "maxItems": 784,
                        "description": "28x28 grey levels, row by row",
                    },
                    "run": _RUN_FIELD,
                    "fields": {
                        "type": "array",
                        "items": {"type": "string", "enum": ["saliency", "layers", "neighbours"]},
                        "description": "the optional parts of the answer; default: saliency alone",
                    },
                    "saliency": {
                        "type": "boolean",
                        "default": True,
                        "description": "without `fields`: saliency or not",
                    },
                    "normalise": {
                        "type": "boolean",
                        "default": True,
                        "description": "false: `pixels` are MNIST-like already (centred 20x20 in 28x28)",
                    },
                },
                "additionalProperties": False,
                "oneOf": [
                    {
                        "required": ["image"],
                        "not": {"required": ["pixels"]},
                        "properties": {"normalise": {"const": True}},
                    },
                    {"required": ["pixels"], "not": {"required": ["image"]}},
                ],
            },
            "Prediction": _object(
                {
                    "label": {"type": ["integer", "null"], "minimum": 0, "maximum": 9},
                    "probabilities": {
                        "type": ["array", "null"],
                        "items": {"type": "number"},
                        "minItems": 10,
                        "maxItems": 10,
                    },
                    "confidence": _NULLABLE_NUMBER,
                    "unsure": {"type": "boolean"},
                    "reason": {"type": ["string", "null"]},
                    "empty": {"type": "boolean"},
                    "input": {**_GRID, "description": "the 28x28 uint8 image the model received (255 = ink)"},
                    "saliency": {"oneOf": [_GRID, {"type": "null"}]},
                    "model_ms": {"type": "number"},
                    "run": {"type": "string"},
                    "step": {"type": "integer"},
                    "layers": {"type": "array", "items": {"$ref": "#/components/schemas/LayerValues"}},
                    "neighbours": {"type": "array", "items": {"$ref": "#/components/schemas/Neighbour"}},
                },
                optional=("layers", "neighbours"),
            ),
            "LayerValues": _object(
                {
                    "name": {"type": "string"},
                    "kind": {"type": "string", "enum": ["maps", "units"]},
                    **_LEVELS,
                }
            ),
            "Neighbour": _object(
                {
                    "index": {"type": "integer", "description": "place in the TFDS mnist train split"},
                    "label": {"type": "integer", "minimum": 0, "maximum": 9},
                    "distance": {"type": "number", "description": "Euclidean, in the model's embedding"},
                    "pixels": {
                        "type": "string",
                        "contentEncoding": "base64",
                        "description": "its 28x28 uint8 grey levels, row by row (255 = ink)",
                    },
                }
            ),
            "Kernel": _object({"run": {"type": "string"}, "layer": {"type": "string"}, **_LEVELS}),
            "Layer": _object(
                {
                    "name": {"type": "string"},
                    "kind": {"type": "string", "enum": ["maps", "units"]},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                    "has_kernel": {"type": "boolean"},
                }
            ),
            "Run": _object(
                {
                    "name": {"type": "string"},
                    "step": {"type": "integer"},
                    "model": {"type": "string"},
                    "dataset": {"type": "string", "description": "the TFDS dataset it was trained on"},
                    "class_names": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "what each class index (label, probabilities) stands for",
                    },
                    "test_accuracy": _NULLABLE_NUMBER,
                    "trained_on": {"type": ["string", "null"]},
                    "notes": {"type": "array", "items": {"type": "string"}},
                    "layers": {"type": "array", "items": {"$ref": "#/components/schemas/Layer"}},
                    "neighbours": {"type": "boolean"},
                    "neighbours_problem": {"type": ["string", "null"]},
                    "neighbours_pending": {"type": "boolean", "description": "the training set is being embedded"},
                }
            ),
            "Runs": _object(
                {
                    "default": {"type": ["string", "null"]},
                    "runs": {"type": "array", "items": {"$ref": "#/components/schemas/Run"}},
                    "problem": {"type": ["string", "null"]},
                }
            ),
            "Report": {
                "type": "object",
                "description": "report/report.json of `python -m digitjax.evaluate`, less its mistakes",
                "required": ["step", "test_accuracy", "test_errors", "per_class_accuracy", "confusion_matrix"],
                "properties": {
                    "step": {"type": "integer"},
                    "test_accuracy": {"type": "number"},
                    "test_errors": {"type": "integer"},
                    "per_class_accuracy": {"type": "object", "additionalProperties": {"type": "number"}},
                    "confusion_matrix": {
                        "type": "array",
                        "items": {"type": "array", "items": {"type": "integer"}, "minItems": 10, "maxItems": 10},
                        "minItems": 10,
                        "maxItems": 10,
                    },
                },
            },
            "Mistake": _object(
                {
                    "index": {"type": "integer", "description": "place in the TFDS mnist test split"},
                    "label": {"type": "integer"},
                    "predicted": {"type": "integer"},
                    "confidence": {"type": "number"},
                    "image": {"type": ["string", "null"], "pattern": "^data:image/png;base64,"},
                }
            ),
            "RunReport": _object(
                {
                    "run": {"$ref": "#/components/schemas/Run"},
                    "curves": {"type": "array", "items": _CURVE_POINT},
                    "report": {"oneOf": [{"$ref": "#/components/schemas/Report"}, {"type": "null"}]},
                    "report_status": {"type": "string", "enum": ["ready", "making", "failed"]},
                    "report_problem": {"type": ["string", "null"]},
                    "mistakes": {
                        "oneOf": [
                            {"type": "array", "items": {"$ref": "#/components/schemas/Mistake"}},
                            {"type": "null"},
                        ]
                    },
                }
            ),
            "TestDigit": _object(
                {
                    "index": {"type": "integer"},
                    "label": {"type": "integer", "minimum": 0, "maximum": 9},
                    "pixels": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 0, "maximum": 255},
                        "minItems": 784,
                        "maxItems": 784,
                    },
                }
            ),
            "DrawingRequest": _object(
                {
                    "image": {
                        "type": "string",
                        "pattern": _BASE64,
                        "description": "the drawing as a PNG (base64 or data: URL), 28-1024 px a side",
                    },
                    "label": {"type": "integer", "minimum": 0, "maximum": 9, "description": "the digit it is"},
                    "kind": {"type": "string", "enum": ["mouse", "touch", "pen", "upload"], "default": "mouse"},
                    "run": _RUN_FIELD,
                },
                optional=("kind", "run"),
            )
            | {"examples": [{"image": _EXAMPLE_DRAWING, "label": 1, "kind": "mouse"}]},
            "StoredDrawing": _object(
                {
                    "id": {"type": "integer"},
                    "label": {"type": "integer", "minimum": 0, "maximum": 9},
                    "answer": {"type": "integer", "minimum": 0, "maximum": 9},
                    "confidence": {"type": "number"},
                    "run": {"type": "string"},
                    "step": {"type": "integer"},
                    "kind": {"type": "string", "enum": ["mouse", "touch", "pen", "upload"]},
                    "split": {
                        "type": "string",
                        "enum": ["train", "test"],
                        "description": "its split in an export, for good",
                    },
                    "delete_token": {
                        "type": "string",
                        "description": "the secret that deletes this drawing (DELETE /api/drawings/{id}); shown once",
                    },
                }
            ),
            "DrawingStats": _object(
                {
                    "count": {"type": "integer"},
                    "by_label": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "by_kind": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "run": {"type": "string"},
                    "step": {"type": "integer"},
                    "correct": {"type": "integer"},
                    "accuracy": _NULLABLE_NUMBER,
                }
            ),
            "Deleted": _object({"deleted": {"type": "integer"}}),
            "Health": _object(
                {
                    "status": {"type": "string", "enum": ["ok", "unavailable"]},
                    "run": {"type": "string"},
                    "runs": {"type": "integer"},
                    "error": {"type": "string"},
                },
                optional=("run", "runs", "error"),
            ),
            "Error": _object({"error": {"type": "string"}, "status": {"type": "integer"}}),
        },
    },
}
