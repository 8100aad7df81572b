"""The labelled drawings: the SQLite store (schema versions, concurrent writers, export as MNIST
files) and its API in the app (what is stored, and every bad input a 4xx that stores nothing)."""

import base64
import gzip
import io
import sqlite3
import threading

import numpy as np
import pytest
from PIL import Image

from digitjax.canvas import drawings
from digitjax.errors import UserError
from webui import create_app


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
    assert columns == ["id", "created", "label", "input", "png", "answer", "confidence", "run", "step", "kind"]


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
def app(synthetic_checkpoints, tmp_path_factory):
    """The app with an empty store; each test leaves it empty."""
    config = {"CHECKPOINTS": str(synthetic_checkpoints), "WORKDIR": None, "NEIGHBOURS": 0}
    return create_app(config | {"DRAWINGS_DB": str(tmp_path_factory.mktemp("store") / "drawings.sqlite")})


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
    assert client.delete(f"/api/drawings/{stored['id']}").json == {"deleted": stored["id"]}
    assert client.delete(f"/api/drawings/{stored['id']}").status_code == 404
    assert client.delete(f"/api/drawings/{2**70}").status_code == 404
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
