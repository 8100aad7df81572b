"""Property-based fuzz of the HTTP API: no generated request may get a 5xx; every 4xx is JSON.

    python -m experiments.fuzz_api --workdir checkpoints/fast --requests 2000    # gunicorn on loopback, ~1 min

Hypothesis (a dev dependency) draws requests of every kind: JSON bodies well-formed or not,
pixel lists of any length and value, images valid, truncated, huge, of other formats or not
images at all, base64 and data URLs, multipart forms, raw bytes under any content type,
unknown and hostile run names, deeply nested JSON, other methods, odd and traversal paths.
Each answer must have
  - a status under 500;
  - for a 4xx, Content-Type application/json and an `error` string;
  - the security headers (a CSP with frame-ancestors, nosniff);
  - for a 200 from POST /api/predict, a label from 0 to 9 or none.
At the first violation Hypothesis shrinks it to a minimal request, printed; the command exits 1.
tests/test_webui.py runs the same fuzz, shorter, through Flask's test client.
"""

from __future__ import annotations

import argparse
import base64
import collections
import functools
import http.client
import io
import json
import struct
import sys
import time
import urllib.parse
import zlib

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from PIL import Image

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
ENDPOINTS = ("/api/predict", "/api/model", "/api/openapi.json", "/healthz", "/", "/static/app.js", "/static/app.css")
ENDPOINTS += (
    "/api/runs/tiny",
    "/api/runs/tiny/layers/conv1/kernel",
    "/api/digits/test/0",
    "/runs/tiny",
    "/runs/a/vs/b",
)
# Paths that would reach files outside the app if anything joined them to a folder naively.
TRAVERSALS = (
    "/static/../digitjax/train.py",
    "/static/..%2f..%2fpyproject.toml",
    "/static/%2e%2e/%2e%2e/etc/passwd",
    "/static//etc/passwd",
    "/api/../../../etc/passwd",
    "/static/..%5c..%5cREADME.md",
    "/%2e%2e/checkpoints",
)
CONTENT_TYPES = (
    "application/json",
    "application/json; charset=utf-16",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "multipart/form-data; boundary=x",
    "image/png",
    "",
)
RUN_NAMES = ("", "tiny", "../tiny", "../../etc/passwd", "/etc/passwd", "checkpoints/tiny", "%2e%2e", "tiny\x00")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def claimed_size_png(width: int, height: int) -> bytes:
    """A tiny file whose header claims width x height pixels: a decompression bomb's calling card."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b"")


@functools.cache
def real_bomb_png() -> bytes:
    """5,000 x 5,000 black pixels in a 25 KB PNG: 25 M pixels once decoded."""
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, "PNG")
    return buf.getvalue()


@st.composite
def image_files(draw) -> bytes:
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1", "LA", "I;16"]))
    size = (draw(st.integers(1, 400)), draw(st.integers(1, 400)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), np.uint8)).convert(mode)
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]))
    buf = io.BytesIO()
    try:
        image.save(buf, fmt)
    except (OSError, ValueError, KeyError):  # a mode the format cannot hold
        image.convert("RGB").save(buf, fmt)
    data = buf.getvalue()
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "flip":
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
    return data


def files() -> st.SearchStrategy[bytes]:
    return st.one_of(
        image_files(),
        st.binary(max_size=300),
        st.builds(claimed_size_png, st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1)),
        st.just(b"bomb").map(lambda _: real_bomb_png()),
    )


JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
JSON_ANY = st.recursive(
    JSON_LEAVES, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
)
PIXELS = st.one_of(
    st.lists(st.integers(0, 255), min_size=784, max_size=784),
    st.lists(st.floats(0, 255), min_size=784, max_size=784),
    st.lists(st.one_of(st.integers(-300, 600), st.integers(), st.floats(), JSON_LEAVES), max_size=900),
    st.lists(st.integers(0, 255), min_size=784, max_size=784).flatmap(
        lambda ok: st.tuples(st.integers(0, 783), JSON_ANY).map(lambda bad: ok[: bad[0]] + [bad[1]] + ok[bad[0] + 1 :])
    ),
    JSON_ANY,
)
IMAGE_FIELD = st.one_of(
    files().map(lambda b: base64.b64encode(b).decode()),
    files().map(lambda b: "data:image/png;base64," + base64.b64encode(b).decode()),
    st.text(max_size=50),
    JSON_ANY,
)
PREDICT_JSON = st.fixed_dictionaries(
    {},
    optional={
        "pixels": PIXELS,
        "image": IMAGE_FIELD,
        "run": st.one_of(st.sampled_from(RUN_NAMES), st.text(max_size=20), JSON_ANY),
        "saliency": JSON_ANY,
        "normalise": JSON_ANY,
        "fields": st.one_of(st.lists(st.sampled_from(["saliency", "layers", "neighbours", "x"]), max_size=4), JSON_ANY),
    },
)


@st.composite
def multipart(draw) -> tuple[str, bytes]:
    boundary = "fuzz" + draw(st.text("abcdef0123456789", min_size=1, max_size=16))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(
            st.one_of(st.sampled_from(["image", "image", "file", "run", "saliency", "fields"]), st.text(max_size=10))
        )
        if draw(st.booleans()):
            head = f'Content-Disposition: form-data; name="{name}"; filename="digit.png"\r\nContent-Type: image/png'
            content = draw(files())
        else:
            head = f'Content-Disposition: form-data; name="{name}"'
            content = draw(st.one_of(st.sampled_from(RUN_NAMES), st.text(max_size=20))).encode(errors="replace")
        parts.append(f"--{boundary}\r\n{head}\r\n\r\n".encode(errors="replace") + content + b"\r\n")
    body = b"".join(parts) + (f"--{boundary}--\r\n".encode() if draw(st.booleans()) else b"")
    return f"multipart/form-data; boundary={boundary}", body


@st.composite
def requests(draw) -> tuple[str, str, dict, bytes]:
    """(method, path, headers, body), five in six of them to POST /api/predict."""
    kind = draw(st.sampled_from(["json", "json", "hostile json", "multipart", "raw", "other"]))
    method, path = "POST", "/api/predict"
    if kind == "json":
        content_type = "application/json"
        body = json.dumps(draw(PREDICT_JSON)).encode()  # NaN and Infinity included, as Python writes them
    elif kind == "hostile json":
        content_type = "application/json"
        body = draw(
            st.one_of(
                st.integers(1, 200_000).map(lambda k: b"[" * k + b"]" * k),  # nesting past Python's recursion limit
                st.integers(1, 10_000).map(lambda k: b'{"pixels": [1' + b"0" * k + b"]}"),  # huge integers
                st.binary(max_size=500),
                st.text(max_size=200).map(lambda t: t.encode(errors="replace")),
            )
        )
    elif kind == "multipart":
        content_type, body = draw(multipart())
    elif kind == "raw":
        content_type = draw(st.sampled_from(CONTENT_TYPES))
        body = draw(st.binary(max_size=2000))
    else:
        method = draw(st.sampled_from(METHODS))
        path = draw(
            st.one_of(
                st.sampled_from(ENDPOINTS + TRAVERSALS),
                st.text(max_size=60).map(lambda t: "/" + urllib.parse.quote(t, safe="/?=&")),
            )
        )
        content_type = draw(st.sampled_from(CONTENT_TYPES))
        body = draw(st.binary(max_size=300))
    headers = {"Content-Type": content_type} if content_type else {}
    return method, path, headers, body


def problem(method: str, path: str, status: int, headers: dict, body: bytes) -> str | None:
    """What is wrong with an answer, or None."""
    headers = {k.lower(): v for k, v in headers.items()}
    if status >= 500:
        return f"status {status}"
    if headers.get("x-content-type-options") != "nosniff" or "frame-ancestors" not in headers.get(
        "content-security-policy", ""
    ):
        return "security headers missing"
    page = path.startswith("/runs/") and headers.get("content-type", "").startswith("text/html")
    if 400 <= status < 500 and method != "HEAD" and not page:  # a page's 404 is a page a person reads
        if not headers.get("content-type", "").startswith("application/json"):
            return f"status {status} with Content-Type {headers.get('content-type')!r}, not JSON"
        try:
            error = json.loads(body).get("error")
        except (ValueError, AttributeError):
            return f"status {status} with a body that is not a JSON object"
        if not isinstance(error, str) or not error:
            return f"status {status} without an `error` message"
    if status == 200 and method == "POST" and path == "/api/predict":
        label = json.loads(body).get("label")
        if label is not None and label not in range(10):
            return f"label {label!r}"
    return None


def fuzz(send, n: int, seed: int = 0) -> collections.Counter:
    """Sends `n` generated requests through `send(method, path, headers, body) -> (status, headers,
    body)`; raises AssertionError with a minimal failing request at the first problem. Returns
    the count of answers by status."""
    statuses: collections.Counter = collections.Counter()

    @hypothesis_seed(seed)
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(requests())
    def one(request):
        method, path, headers, body = request
        status, answer_headers, answer = send(method, path, headers, body)
        statuses[status] += 1
        if why := problem(method, path, status, answer_headers, answer):
            raise AssertionError(f"{method} {path} {headers} body {body[:300]!r}...: {why}; answer {answer[:300]!r}")

    one()
    return statuses


def http_sender(port: int):
    def send(method: str, path: str, headers: dict, body: bytes):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request(method, path, body, headers)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    return send


def main() -> None:
    from experiments.bench_serve import gunicorn

    parser = argparse.ArgumentParser(description="Fuzz the HTTP API of a served run under gunicorn.")
    parser.add_argument("--workdir", default="checkpoints/fast")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    with gunicorn(args.workdir) as (port, _):
        try:
            statuses = fuzz(http_sender(port), args.requests, args.seed)
        except AssertionError as e:
            sys.exit(f"FAILED: {e}")
    seconds = time.perf_counter() - started
    total = sum(statuses.values())
    print(f"{total} generated requests in {seconds:.0f} s (seed {args.seed}): no 5xx, every 4xx a JSON error")
    for status, count in sorted(statuses.items()):
        print(f"  {status}: {count}")
    print(json.dumps({"requests": total, "by_status": dict(sorted(statuses.items())), "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
