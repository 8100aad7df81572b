"""The labelled drawings: the SQLite store (schema versions, concurrent writers, export as MNIST
files, backups) and its API in the app (what is stored, every bad input a 4xx that stores nothing,
who may delete, and the limits on what one client stores)."""

import base64
import gzip
import io
import json
import secrets
import sqlite3
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from digitjax.canvas import drawings
from digitjax.errors import UserError
from webui import create_app, limits

OPERATOR = secrets.token_urlsafe(32)


def drawing(label: int, seed: int = 0, kind: str = "mouse") -> drawings.Drawing:
    image = np.random.default_rng(seed).integers(0, 256, (28, 28), np.uint8)
    return drawings.Drawing(label, image, f"png {seed}".encode(), 3, 0.5, "run", 10, kind)


def read_idx(path) -> np.ndarray:
    """Any MNIST-style reader: the IDX header, then the bytes."""
    raw = gzip.decompress(path.read_bytes())
    assert raw[:3] == b"\0\0\x08"
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def test_store_round_trip_and_export(tmp_path):
    conn = drawings.connect(tmp_path / "d.sqlite")
    ids = [drawings.add(conn, drawing(i % 10, seed=i)) for i in range(23)]
    assert ids == list(range(1, 24))
    got_ids, inputs, labels = drawings.labelled(conn)
    np.testing.assert_array_equal(inputs[4], drawing(4, seed=4).input_28x28)
    assert drawings.stats(conn)["count"] == 23 and drawings.stats(conn)["by_label"]["3"] == 2
    assert drawings.delete(conn, 5) and not drawings.delete(conn, 5)
    summary = drawings.export(conn, tmp_path / "out")
    test_ids = [i for i in got_ids if i != 5 and i % drawings.TEST_EVERY == 0]
    assert summary == {"out": str(tmp_path / "out"), "train": 22 - len(test_ids), "test": len(test_ids)}
    test_images = read_idx(tmp_path / "out" / "t10k-images-idx3-ubyte.gz")
    test_labels = read_idx(tmp_path / "out" / "t10k-labels-idx1-ubyte.gz")
    assert test_images.shape == (len(test_ids), 28, 28)
    for image, label, i in zip(test_images, test_labels, test_ids):
        np.testing.assert_array_equal(image, drawing(0, seed=i - 1).input_28x28)
        assert label == (i - 1) % 10
    # A drawing never changes split: more drawings leave the earlier ones where they were.
    drawings.add(conn, drawing(1, seed=99))
    drawings.export(conn, tmp_path / "again")
    np.testing.assert_array_equal(
        read_idx(tmp_path / "again" / "t10k-images-idx3-ubyte.gz")[: len(test_ids)], test_images
    )


def test_schema_versions(tmp_path):
    old = sqlite3.connect(tmp_path / "old.sqlite")  # a store before any table: version 0
    old.execute("PRAGMA user_version = 0")
    old.close()
    assert drawings.add(drawings.connect(tmp_path / "old.sqlite"), drawing(1)) == 1
    newer = sqlite3.connect(tmp_path / "newer.sqlite")
    newer.execute(f"PRAGMA user_version = {drawings.SCHEMA_VERSION + 1}")
    newer.close()
    with pytest.raises(UserError, match="newer digitjax"):
        drawings.connect(tmp_path / "newer.sqlite")
    columns = [r[1] for r in drawings.connect(tmp_path / "old.sqlite").execute("PRAGMA table_info(drawings)")]
    assert columns == [
        "id",
        "created",
        "label",
        "input",
        "png",
        "answer",
        "confidence",
        "run",
        "step",
        "kind",
        "token_sha256",
    ]


def test_concurrent_writers_each_row_once(tmp_path):
    path = tmp_path / "d.sqlite"
    drawings.connect(path).close()
    stored: dict[int, int] = {}

    def writer(w: int):
        conn = drawings.connect(path)
        for j in range(40):
            seed = 1000 * w + j
            stored[drawings.add(conn, drawing(seed % 10, seed=seed))] = seed

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids, inputs, labels = drawings.labelled(drawings.connect(path))
    assert len(ids) == len(stored) == 320
    for i, image, label in zip(ids, inputs, labels):
        np.testing.assert_array_equal(image, drawing(0, seed=stored[i]).input_28x28)
        assert label == stored[i] % 10


@pytest.fixture(scope="module")
def module_app(synthetic_checkpoints, tmp_path_factory):
    """The app with an empty store; each test leaves it empty."""
    config = {"CHECKPOINTS": str(synthetic_checkpoints), "WORKDIR": None, "NEIGHBOURS": 0, "OPERATOR_TOKEN": OPERATOR}
    return create_app(config | {"DRAWINGS_DB": str(tmp_path_factory.mktemp("store") / "drawings.sqlite")})


@pytest.fixture
def app(module_app):
    """The module's app, with no request counted against any client yet (the limiter is the process's)."""
    limits.limiter.reset()
    return module_app


def png_data_url(array: np.ndarray, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def canvas(digit_28x28: np.ndarray) -> np.ndarray:
    return 255 - np.asarray(Image.fromarray(digit_28x28).resize((280, 280)))


def test_a_labelled_drawing_is_stored_with_what_the_model_answered(app, digits):
    client = app.test_client()
    image, _ = digits(1, seed=5)
    sent = png_data_url(canvas(image[0]))
    r = client.post("/api/drawings", json={"image": sent, "label": 7, "kind": "touch"})
    assert r.status_code == 201 and "Set-Cookie" not in r.headers
    stored = r.json
    answer = client.post("/api/predict", json={"image": sent, "fields": []}).json
    assert stored["answer"] == answer["label"] and stored["confidence"] == answer["confidence"]
    assert stored["run"] == "synthetic" and stored["label"] == 7 and stored["kind"] == "touch"
    conn = drawings.connect(app.config["DRAWINGS_DB"])
    row = conn.execute("SELECT label, input, png, answer, kind, run, step FROM drawings").fetchone()
    assert row[0] == 7 and row[3] == answer["label"] and row[4:] == ("touch", "synthetic", answer["step"])
    np.testing.assert_array_equal(np.frombuffer(row[1], np.uint8).reshape(28, 28), answer["input"])
    assert row[2] == base64.b64decode(sent.partition(",")[2])  # the PNG as drawn
    stats = client.get("/api/drawings/stats").json
    assert stats["count"] == 1 and stats["by_label"]["7"] == 1 and stats["accuracy"] == float(answer["label"] == 7)
    token = {"Authorization": f"Bearer {stored['delete_token']}"}
    assert client.delete(f"/api/drawings/{stored['id']}", headers=token).json == {"deleted": stored["id"]}
    assert client.delete(f"/api/drawings/{stored['id']}", headers=token).status_code == 404
    assert client.delete(f"/api/drawings/{2**70}", headers=token).status_code == 404
    assert client.get("/api/drawings/stats").json["count"] == 0


def test_bad_drawings_are_a_4xx_and_nothing_is_stored(app, digits):
    client = app.test_client()
    good = png_data_url(canvas(digits(1, seed=6)[0][0]))
    noise = np.random.default_rng(0).integers(0, 256, (900, 900), np.uint8)
    cases = [
        ({"image": good, "label": 10}, 400, "0 to 9"),
        ({"image": good, "label": "7"}, 400, "0 to 9"),
        ({"image": good, "label": True}, 400, "0 to 9"),
        ({"image": good, "label": 3, "kind": "robot"}, 400, "kind"),
        ({"image": png_data_url(canvas(digits(1, seed=6)[0][0]), "JPEG"), "label": 3}, 415, "PNG"),
        ({"image": png_data_url(np.zeros((20, 20), np.uint8)), "label": 3}, 400, "28 to 1024"),
        ({"image": png_data_url(noise), "label": 3}, 413, "bytes"),
        ({"image": base64.b64encode(b"not an image").decode(), "label": 3}, 415, "not an image"),
        ({"image": png_data_url(np.full((280, 280), 255, np.uint8)), "label": 3}, 400, "Nothing is drawn"),
        ({"image": good, "label": 3, "run": "nope"}, 404, "Unknown run"),
        ({"label": 3}, 400, "image"),
    ]
    for body, status, phrase in cases:
        r = client.post("/api/drawings", json=body)
        assert r.status_code == status and phrase in r.json["error"], (body.get("label"), r.status_code, r.json)
    assert client.post("/api/drawings", data=b"[1, 2]", content_type="application/json").status_code == 400
    assert client.get("/api/drawings/stats").json["count"] == 0


@pytest.mark.slow  # trains: a compile of the whole train step
def test_fine_tuning_starts_from_the_run_and_evaluates_the_drawings(
    synthetic_checkpoints, synthetic_tfds, digits, tmp_path
):
    """A fine-tune (experiments/finetune_drawings.py's fields) starts from the trained run's model,
    trains on the training drawings too and evaluates their test split; evaluate --drawings agrees."""
    import jax
    from flax import nnx

    from digitjax import data, evaluate, trainer
    from digitjax.runs import checkpoint
    from experiments import finetune_drawings

    store = tmp_path / "drawings.sqlite"
    conn = drawings.connect(store)
    images, labels = digits(60, seed=12)
    for image, label in zip(images, labels):
        drawings.add(conn, drawings.Drawing(int(label), image, b"png", None, None, None, None, "mouse"))
    source = synthetic_checkpoints / "synthetic"
    config = finetune_drawings.get_config()
    config.model, config.init_from, config.drawings, config.drawings_weight = "fast", str(source), str(store), 2
    config.train_size, config.validation_size, config.batch_size = 64, 0, 32
    # With a learning rate of 0 the parameters stay the source's: what the run started from.
    config.learning_rate, config.lr_schedule = 0.0, "constant"
    trainer.train_and_evaluate(config, tmp_path / "tuned", data.Paths(str(synthetic_tfds), "/nonexistent"))
    tuned, original = checkpoint.load_for_inference(tmp_path / "tuned"), checkpoint.load_for_inference(source)
    for a, b in zip(
        jax.tree.leaves(nnx.state(tuned.model, nnx.Param)), jax.tree.leaves(nnx.state(original.model, nnx.Param))
    ):
        np.testing.assert_array_equal(a, b)
    from digitjax.runs import metrics

    drawn = [r for r in metrics.read(tmp_path / "tuned") if r["split"] == "drawings"]
    report = evaluate.drawings_report(tuned, str(store))
    assert report["count"] == 12 and drawn and drawn[-1]["accuracy"] == report["accuracy"]


def _rows(path) -> list[tuple]:
    return drawings.connect(path).execute("SELECT * FROM drawings ORDER BY id").fetchall()


def _keep(app, digits, n: int, client_address: str, seed: int) -> list[dict]:
    client = app.test_client()
    images, _ = digits(n, seed=seed)
    kept = []
    for i, image in enumerate(images):
        body = {"image": png_data_url(canvas(image)), "label": (seed + i) % 10}
        r = client.post("/api/drawings", json=body, environ_base={"REMOTE_ADDR": client_address})
        assert r.status_code == 201, r.json
        kept.append(r.json)
    return kept


def test_only_a_drawings_own_token_or_the_operators_deletes_it(app, digits):
    """Three clients keep drawings; then DELETE on every id from 1 to past the last, with no token,
    a wrong one and another drawing's: every answer a 4xx that reads the same whether the id exists
    or not, and the store unchanged, row for row. Each token then deletes its own drawing, and the
    operator's token the last."""
    kept = [d for i in range(3) for d in _keep(app, digits, 3, f"10.0.0.{i + 1}", seed=10 * i)]
    tokens = {d["id"]: d["delete_token"] for d in kept}
    assert len(set(tokens.values())) == len(kept) and all(len(t) >= 43 for t in tokens.values())  # >= 256 bits
    before = _rows(app.config["DRAWINGS_DB"])
    assert all(len(row[-1]) == 32 and row[-1] not in [t.encode() for t in tokens.values()] for row in before)
    client, ids = app.test_client(), sorted(tokens)
    for drawing_id in range(1, ids[-1] + 5):
        other = tokens[ids[(ids.index(drawing_id) + 1) % len(ids)]] if drawing_id in tokens else tokens[ids[0]]
        for headers, status in [
            ({}, 401),
            ({"Authorization": "Basic " + tokens.get(drawing_id, "x")}, 401),
            ({"Authorization": f"Bearer {secrets.token_urlsafe(32)}"}, 404),
            ({"Authorization": f"Bearer {other}"}, 404),
            ({"Authorization": f"Bearer {OPERATOR[:-1]}"}, 404),
        ]:
            r = client.delete(f"/api/drawings/{drawing_id}", headers=headers)
            assert r.status_code == status, (drawing_id, headers, r.json)
            assert (r.headers.get("WWW-Authenticate") == 'Bearer realm="drawings"') == (status == 401)
            assert r.json["error"].replace(str(drawing_id), "ID") in (
                "Deleting a drawing needs its delete token: `Authorization: Bearer <token>`.",
                "No drawing ID that this token may delete.",
            )
    assert _rows(app.config["DRAWINGS_DB"]) == before
    for drawing_id in ids[:-1]:
        r = client.delete(f"/api/drawings/{drawing_id}", headers={"Authorization": f"Bearer {tokens[drawing_id]}"})
        assert r.status_code == 200 and r.json == {"deleted": drawing_id}
    r = client.delete(f"/api/drawings/{ids[-1]}", headers={"Authorization": f"Bearer {OPERATOR}"})
    assert r.status_code == 200 and _rows(app.config["DRAWINGS_DB"]) == []


def test_a_flood_from_one_client_is_refused_and_the_quota_holds(app, digits):
    """One client sends 40 drawings as fast as it can: the first 12 are kept, then the store is full
    (507, quota 12 rows), then the rate limit (20 a minute) answers 429 with Retry-After. Every
    acknowledged drawing is in the store exactly once, with its own label and PNG."""
    app.config.update(DRAWINGS_RATE_LIMIT="20 per minute", DRAWINGS_MAX_ROWS=12)
    try:
        client, images = app.test_client(), digits(40, seed=3)[0]
        sent, answers = [png_data_url(canvas(image)) for image in images], []
        for i, image in enumerate(sent):
            answers.append(client.post("/api/drawings", json={"image": image, "label": i % 10}))
        statuses = [r.status_code for r in answers]
        assert statuses == [201] * 12 + [507] * 8 + [429] * 20, statuses
        assert all(int(r.headers["Retry-After"]) > 0 for r in answers if r.status_code == 429)
        assert "store is full" in answers[12].json["error"] and "limit" in answers[-1].json["error"]
        rows = {row[0]: row for row in _rows(app.config["DRAWINGS_DB"])}
        acknowledged = {r.json["id"]: i for i, r in enumerate(answers) if r.status_code == 201}
        assert sorted(rows) == sorted(acknowledged) and len(rows) <= 12
        for drawing_id, i in acknowledged.items():
            assert rows[drawing_id][2] == i % 10 and rows[drawing_id][4] == base64.b64decode(sent[i].partition(",")[2])
        print(json.dumps({"201": statuses.count(201), "507": statuses.count(507), "429": statuses.count(429)}))
    finally:
        app.config.update(DRAWINGS_RATE_LIMIT="30 per minute; 500 per day", DRAWINGS_MAX_ROWS=100_000)
        drawings.connect(app.config["DRAWINGS_DB"]).execute("DELETE FROM drawings")


def test_predict_is_unlimited_unless_configured(app):
    client, pixels = app.test_client(), {"pixels": [0] * 784, "fields": []}
    assert {client.post("/api/predict", json=pixels).status_code for _ in range(40)} == {200}
    app.config["PREDICT_RATE_LIMIT"] = "5 per minute"
    try:
        statuses = [client.post("/api/predict", json=pixels).status_code for _ in range(8)]
        assert statuses == [200] * 5 + [429] * 3
    finally:
        app.config["PREDICT_RATE_LIMIT"] = None


def test_store_quota_counts_rows_and_bytes_and_keeps_what_it_holds(tmp_path):
    conn = drawings.connect(tmp_path / "s.sqlite")
    quota = drawings.Quota(rows=3, png_bytes=20)
    for seed in range(2):
        drawings.add(conn, drawing(1, seed), quota=quota)  # "png 0", "png 1": 5 bytes each
    with pytest.raises(drawings.StoreFull):
        drawings.add(
            conn, drawings.Drawing(2, np.zeros((28, 28), np.uint8), b"x" * 11, 2, 1.0, "r", 1, "pen"), quota=quota
        )
    drawings.add(conn, drawing(3, 2), quota=quota)
    with pytest.raises(drawings.StoreFull):
        drawings.add(conn, drawing(4, 3), quota=quota)
    assert drawings.totals(conn) == (3, 15) and [r[2] for r in _rows(tmp_path / "s.sqlite")] == [1, 1, 3]
    drawings.delete(conn, 1)
    assert drawings.totals(conn) == (2, 10)


def test_a_version_1_store_is_upgraded_with_its_totals(tmp_path):
    path = tmp_path / "v1.sqlite"
    old = sqlite3.connect(path)
    old.executescript(drawings.MIGRATIONS[1] + "PRAGMA user_version = 1;")
    old.execute(
        "INSERT INTO drawings (created, label, input, png, kind) VALUES (0, 5, ?, ?, 'pen')", (b"\0" * 784, b"abc")
    )
    old.commit()
    old.close()
    conn = drawings.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == drawings.SCHEMA_VERSION
    assert drawings.totals(conn) == (1, 3)
    assert not drawings.delete_with_token(conn, 1, "anything"), "a drawing kept before tokens: only the operator"
    assert drawings.delete(conn, 1) and drawings.totals(conn) == (0, 0)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "digitjax.canvas.drawings", *args], capture_output=True, text=True)


def test_backup_is_a_checked_copy_and_never_overwrites(tmp_path):
    store = tmp_path / "s.sqlite"
    conn = drawings.connect(store)
    for seed in range(5):
        drawings.add(conn, drawing(seed, seed))
    proc = _cli("backup", "--store", str(store), "--out", str(tmp_path / "b.sqlite"))
    assert json.loads(proc.stdout) == {"out": str(tmp_path / "b.sqlite"), "drawings": 5, "integrity_check": "ok"}
    assert _rows(tmp_path / "b.sqlite") == _rows(store)
    drawings.add(conn, drawing(9, 9))
    again = _cli("backup", "--store", str(store), "--out", str(tmp_path / "b.sqlite"))
    assert again.returncode != 0 and "exists" in again.stderr and len(_rows(tmp_path / "b.sqlite")) == 5
    assert sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == []
