"""Digits people drew and labelled on the canvas: a SQLite store, and its export as MNIST files.

    python -m digitjax.canvas.drawings stats --store instance/drawings.sqlite
    python -m digitjax.canvas.drawings export --store instance/drawings.sqlite --out DIR   # four IDX files
    python -m digitjax.canvas.drawings delete --store instance/drawings.sqlite ID
    python -m digitjax.canvas.drawings backup --store instance/drawings.sqlite --out COPY   # while the app runs

One row per labelled drawing: the 28x28 input the model saw, the raw canvas PNG, the label the
person gave, the model's answer and confidence, the run and step that answered, the time and
the input kind. Nothing about the person (no cookie, address or user agent) is kept. The store
is in WAL mode, so the web app's processes and threads write to it at once; its schema carries a
version, so a later digitjax opens (and upgrades) an older store. A drawing kept through the web
app carries the SHA-256 of its delete token, never the token; the store's totals (rows, PNG bytes)
are kept by triggers, so a quota is checked in constant time.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

import numpy as np

from digitjax.errors import UserError

KINDS = ("mouse", "touch", "pen", "upload")
TEST_EVERY = 5  # a drawing whose id is a multiple of this is in the export's test split, for good
SCHEMA_VERSION = 2
# Each version's statements, applied in order to a store of an older version.
MIGRATIONS = {
    1: """
    CREATE TABLE drawings (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created REAL NOT NULL,
        label INTEGER NOT NULL CHECK (label BETWEEN 0 AND 9),
        input BLOB NOT NULL CHECK (length(input) = 784),
        png BLOB NOT NULL,
        answer INTEGER CHECK (answer BETWEEN 0 AND 9),
        confidence REAL,
        run TEXT,
        step INTEGER,
        kind TEXT NOT NULL CHECK (kind IN ('mouse', 'touch', 'pen', 'upload'))
    );
    """,
    2: """
    ALTER TABLE drawings ADD COLUMN token_sha256 BLOB;
    CREATE TABLE totals (id INTEGER PRIMARY KEY CHECK (id = 0), rows INTEGER NOT NULL, png_bytes INTEGER NOT NULL);
    INSERT INTO totals SELECT 0, count(*), coalesce(sum(length(png)), 0) FROM drawings;
    CREATE TRIGGER count_added AFTER INSERT ON drawings BEGIN
        UPDATE totals SET rows = rows + 1, png_bytes = png_bytes + length(NEW.png);
    END;
    CREATE TRIGGER count_deleted AFTER DELETE ON drawings BEGIN
        UPDATE totals SET rows = rows - 1, png_bytes = png_bytes - length(OLD.png);
    END;
    """,
}


class StoreFull(Exception):
    """The store holds its quota of drawings or PNG bytes; nothing was added."""


@dataclasses.dataclass(frozen=True)
class Quota:
    rows: int  # drawings kept at most
    png_bytes: int  # bytes of their PNGs at most


@dataclasses.dataclass(frozen=True)
class Drawing:
    label: int
    input_28x28: np.ndarray  # uint8, 255 = ink: what the model saw
    png: bytes  # the canvas (or upload) as drawn
    answer: int | None
    confidence: float | None
    run: str | None
    step: int | None
    kind: str


def connect(path: str | Path) -> sqlite3.Connection:
    """The store at `path`, created or upgraded to this digitjax's schema."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # an acknowledged drawing survives a crash of the machine too
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        conn.close()
        raise UserError(
            f"The drawings store {path} has schema version {version}, made by a newer digitjax "
            f"(this one knows {SCHEMA_VERSION}); upgrade digitjax, or point the app at another store."
        )
    if version < SCHEMA_VERSION:
        _migrate(conn)
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")  # two processes starting at once: one migrates, the other waits
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for v in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _statements(MIGRATIONS[v]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {v}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """A migration's statements, split where SQLite says one is complete (a trigger keeps its body)."""
    out, current = [], ""
    for part in script.split(";"):
        current += part + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n;"):
                out.append(current.strip())
            current = ""
    return out


def token_hash(token: str) -> bytes:
    """What the store keeps of a delete token: a hash, so a copy of the store deletes nothing."""
    return hashlib.sha256(token.encode()).digest()


def add(conn: sqlite3.Connection, d: Drawing, token_sha256: bytes | None = None, quota: Quota | None = None) -> int:
    """Stores one drawing in its own transaction; returns its id once it is committed.

    With a quota the check and the insert are one transaction, so processes writing at once never
    overshoot it; a full store raises StoreFull and keeps what it holds."""
    if d.kind not in KINDS or not 0 <= d.label <= 9 or d.input_28x28.shape != (28, 28):
        raise ValueError(f"not a storable drawing: kind {d.kind!r}, label {d.label!r}, input {d.input_28x28.shape}")
    row = (time.time(), d.label, d.input_28x28.astype(np.uint8).tobytes(), d.png, d.answer, d.confidence, d.run)
    row += (d.step, d.kind, token_sha256)
    conn.execute("BEGIN IMMEDIATE")
    try:
        if quota is not None:
            rows, png_bytes = totals(conn)
            if rows + 1 > quota.rows or png_bytes + len(d.png) > quota.png_bytes:
                raise StoreFull(f"the store holds {rows:,} drawings, {png_bytes:,} bytes of PNG")
        cursor = conn.execute(
            "INSERT INTO drawings (created, label, input, png, answer, confidence, run, step, kind, token_sha256)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(cursor.lastrowid)


def totals(conn: sqlite3.Connection) -> tuple[int, int]:
    """Drawings kept, and the bytes of their PNGs."""
    return conn.execute("SELECT rows, png_bytes FROM totals").fetchone()


def delete(conn: sqlite3.Connection, drawing_id: int) -> bool:
    """The operator's delete: any drawing, by id."""
    return conn.execute("DELETE FROM drawings WHERE id = ?", (drawing_id,)).rowcount == 1


def delete_with_token(conn: sqlite3.Connection, drawing_id: int, token: str) -> bool:
    """Deletes the drawing only if `token` is the one its keeping returned.

    The hashes are compared by SQLite, not in constant time: timing can reveal at most a prefix of
    the stored hash, which does not help to find a token."""
    query = "DELETE FROM drawings WHERE id = ? AND token_sha256 = ?"
    return conn.execute(query, (drawing_id, token_hash(token))).rowcount == 1


def backup(store: Path, out: Path) -> dict:
    """A consistent copy of the store with SQLite's online backup, while the app may be writing.

    Written beside `out` and moved into place once whole and checked; an existing `out` is never
    overwritten."""
    if out.exists():
        raise UserError(f"{out} exists; choose a new file for the backup (nothing was written).")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    source, copy = connect(store), sqlite3.connect(partial)
    try:
        source.backup(copy)
        check = copy.execute("PRAGMA integrity_check").fetchone()[0]
        rows = copy.execute("SELECT count(*) FROM drawings").fetchone()[0]
    finally:
        copy.close()
        source.close()
    if check != "ok":
        partial.unlink()
        raise UserError(f"The backup of {store} failed SQLite's integrity check ({check}); nothing was written.")
    os.link(partial, out)  # fails rather than replace a file that appeared meanwhile
    partial.unlink()
    return {"out": str(out), "drawings": rows, "integrity_check": check}


def labelled(conn: sqlite3.Connection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ids_N, inputs_Nx28x28 (uint8) and labels_N of every stored drawing, oldest first."""
    rows = conn.execute("SELECT id, input, label FROM drawings ORDER BY id").fetchall()
    ids = np.asarray([r[0] for r in rows], np.int64)
    inputs = np.frombuffer(b"".join(r[1] for r in rows), np.uint8).reshape(len(rows), 28, 28)
    return ids, inputs, np.asarray([r[2] for r in rows], np.int32)


def stats(conn: sqlite3.Connection) -> dict:
    count = conn.execute("SELECT count(*) FROM drawings").fetchone()[0]
    by_label = dict(conn.execute("SELECT label, count(*) FROM drawings GROUP BY label").fetchall())
    by_kind = dict(conn.execute("SELECT kind, count(*) FROM drawings GROUP BY kind").fetchall())
    return {"count": count, "by_label": {str(c): by_label.get(c, 0) for c in range(10)}, "by_kind": by_kind}


def split_of(ids_N: np.ndarray) -> np.ndarray:
    """True where a drawing is in the test split: by its id, so it never moves between splits."""
    return ids_N % TEST_EVERY == 0


def write_idx(path: Path, array: np.ndarray) -> None:
    """One gzipped IDX file of uint8 (magic 0x08, the way MNIST's files are written)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def export(conn: sqlite3.Connection, out: Path) -> dict:
    """The store as MNIST's four files (train/t10k images and labels) in `out`."""
    ids, inputs, labels = labelled(conn)
    test = split_of(ids)
    out.mkdir(parents=True, exist_ok=True)
    for prefix, rows in (("train", ~test), ("t10k", test)):
        write_idx(out / f"{prefix}-images-idx3-ubyte.gz", inputs[rows])
        write_idx(out / f"{prefix}-labels-idx1-ubyte.gz", labels[rows].astype(np.uint8))
    return {"out": str(out), "train": int((~test).sum()), "test": int(test.sum())}


def read_idx(path: Path) -> np.ndarray:
    """A gzipped uint8 IDX file of any shape (an export's; MNIST's own are checked by digitjax.data)."""
    raw = gzip.decompress(path.read_bytes())
    if raw[:3] != b"\0\0\x08":
        raise UserError(f"{path} is not a uint8 IDX file.")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def load(store_or_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images_Nx28x28, labels_N), "test": ...} of a store, or of a folder it was exported to."""
    path = Path(store_or_dir)
    if path.is_dir():
        try:
            return {
                split: (
                    read_idx(path / f"{prefix}-images-idx3-ubyte.gz"),
                    read_idx(path / f"{prefix}-labels-idx1-ubyte.gz"),
                )
                for split, prefix in (("train", "train"), ("test", "t10k"))
            }
        except FileNotFoundError as e:
            raise UserError(f"{path} is not an export of drawings ({e.filename} is missing).")
    if not path.is_file():
        raise UserError(
            f"No drawings at {path}: pass the store (the app's DRAWINGS_DB) or a folder it was exported to."
        )
    ids, inputs, labels = labelled(connect(path))
    test = split_of(ids)
    return {"train": (inputs[~test], labels[~test]), "test": (inputs[test], labels[test])}


def main(argv=None) -> None:
    from digitjax.errors import exit_on_user_error

    parser = argparse.ArgumentParser(description="The canvas's labelled drawings: stats, export, delete, backup.")
    parser.add_argument("command", choices=["stats", "export", "delete", "backup"])
    parser.add_argument("id", nargs="?", type=int, help="for delete: the drawing's id")
    parser.add_argument("--store", default="instance/drawings.sqlite", help="the SQLite store (the app's DRAWINGS_DB)")
    parser.add_argument("--out", help="for export: the folder for the four IDX files; for backup: the new file")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if not Path(args.store).is_file():
            raise UserError(f"No drawings store at {args.store}; pass --store (the web app's DRAWINGS_DB).")
        if args.command == "backup":
            if not args.out:
                raise UserError("backup needs --out FILE, a new file for the copy.")
            print(json.dumps(backup(Path(args.store), Path(args.out))))
            return
        conn = connect(args.store)
        if args.command == "stats":
            print(json.dumps(stats(conn)))
        elif args.command == "export":
            if not args.out:
                raise UserError("export needs --out DIR, the folder for the four IDX files.")
            print(json.dumps(export(conn, Path(args.out))))
        else:
            if args.id is None:
                raise UserError("delete needs the drawing's id: python -m digitjax.canvas.drawings delete ID")
            print(json.dumps({"deleted": delete(conn, args.id), "id": args.id}))
        conn.close()


if __name__ == "__main__":
    main()
