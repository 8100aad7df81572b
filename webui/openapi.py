"""The API's OpenAPI 3.1 description, served at /api/openapi.json."""

_ERROR = {
    "description": "What was wrong",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_GRID = {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 28, "maxItems": 28}}

SPEC = {
    "openapi": "3.1.0",
    "info": {
        "title": "digitjax",
        "version": "0.1.0",
        "description": "Handwritten digit recognition: send an image of one digit, get the model's answer.",
    },
    "paths": {
        "/api/predict": {
            "post": {
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
                                    "run": {"type": "string"},
                                    "saliency": {"type": "string", "enum": ["true", "false"]},
                                },
                            }
                        },
                    },
                },
                "responses": {
                    "200": {
                        "description": "The prediction, or empty: true when nothing was drawn",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Prediction"}}},
                    },
                    "400": _ERROR,
                    "404": _ERROR,
                    "413": _ERROR,
                    "415": _ERROR,
                    "503": _ERROR,
                },
            }
        },
        "/api/model": {
            "get": {
                "summary": "The runs served here and the default one.",
                "responses": {
                    "200": {"description": "Runs", "content": {"application/json": {"schema": {"type": "object"}}}}
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: 200 when a model is served, 503 when none is.",
                "responses": {"200": {"description": "Serving"}, "503": _ERROR},
            }
        },
    },
    "components": {
        "schemas": {
            "PredictRequest": {
                "type": "object",
                "properties": {
                    "image": {"type": "string", "description": "PNG, JPEG or WebP, base64 or a data: URL"},
                    "pixels": {
                        "type": "array",
                        "items": {"type": "number", "minimum": 0, "maximum": 255},
                        "minItems": 784,
                        "maxItems": 784,
                        "description": "28x28 grey levels, row by row",
                    },
                    "run": {
                        "type": "string",
                        "description": "a run name from GET /api/model; default: the default run",
                    },
                    "saliency": {"type": "boolean", "default": True},
                },
            },
            "Prediction": {
                "type": "object",
                "properties": {
                    "label": {"type": ["integer", "null"], "minimum": 0, "maximum": 9},
                    "probabilities": {"type": ["array", "null"], "items": {"type": "number"}},
                    "confidence": {"type": ["number", "null"]},
                    "unsure": {"type": "boolean"},
                    "reason": {"type": ["string", "null"]},
                    "empty": {"type": "boolean"},
                    "input": {**_GRID, "description": "the 28x28 uint8 image the model received (255 = ink)"},
                    "saliency": {"oneOf": [_GRID, {"type": "null"}]},
                    "model_ms": {"type": "number"},
                    "run": {"type": "string"},
                    "step": {"type": "integer"},
                },
            },
            "Error": {
                "type": "object",
                "required": ["error", "status"],
                "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
            },
        }
    },
}
