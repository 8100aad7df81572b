"""Workdirs on an object store (`gs://bucket/run`) as well as on a local or network disk.

A workdir is an `etils.epath.Path` either way; this module holds what differs: objects are
written whole (no appends, no atomic renames, no directories) and a lock cannot be a file lock.
The lock on a bucket is a lease, `.lock`, taken and renewed with generation preconditions:
  - taking it is an atomic create (`ifGenerationMatch=0`): of two runs started at once, one wins;
  - the holder rewrites it every LEASE_S / 4 seconds, each time only if nobody else wrote it since;
  - a lease not renewed for LEASE_S seconds (its holder died or lost the network), or held by a
    process of this host that no longer runs, may be taken over, again with a precondition.
What it does not guarantee: a holder paused for longer than the lease (a frozen VM) may resume
writing after another run took over; it notices at its next renewal and stops before its next
save, but a save already under way is not fenced. Clocks of the hosts must agree to within the lease.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator

from etils import epath

from digitjax.errors import UserError

LEASE_S = 120.0
_INSTALL = 'Workdirs on gs:// need gcsfs and google-cloud-storage: pip install -e ".[gcs]".'


def is_remote(path: epath.Path) -> bool:
    return "://" in str(path)


def _fresh_listings() -> None:
    """Turns off gcsfs's cache of listings (unless the user's fsspec config sets it): another
    process writes the same workdir, and a stale size or listing makes a damaged file look intact
    (and gcsfs's reader wait for bytes that no longer exist)."""
    try:
        import fsspec.config
    except ImportError:
        return
    fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)


_fresh_listings()


def check_supported(path: epath.Path) -> None:
    """A clear error for a scheme digitjax cannot lock, a missing client library or a missing bucket."""
    if not is_remote(path):
        return
    if not str(path).startswith("gs://"):
        raise UserError(f"{path}: digitjax keeps runs on local or network disks and on gs:// buckets only.")
    if "/" not in str(path).removeprefix("gs://").strip("/"):
        raise UserError(f"{path} is a whole bucket; give the run a folder in it, e.g. {path}/runs/NAME.")
    try:
        import gcsfs  # noqa: F401  (epath's gs:// backend)
        from google.cloud import storage  # noqa: F401
    except ImportError:
        raise UserError(_INSTALL) from None
    if not _bucket(path).exists():
        raise UserError(f"The bucket of {path} does not exist (or this account cannot see it); create it first.")


def write_text(path: epath.Path, text: str) -> None:
    """Writes a file so that a reader sees the old or the new text, never a part."""
    if is_remote(path):
        path.write_text(text)  # an object appears whole when its upload completes
        return
    partial = path.parent / f"{path.name}.partial"
    partial.write_text(text)
    os.replace(partial, path)


def read_text(path: epath.Path) -> str:
    """A file's text; on a bucket in one request, so a reader racing the writer's replacement of
    the object gets the old or the new one whole (gcsfs asks the size first, then a byte range)."""
    if not is_remote(path):
        return path.read_text()
    from google.api_core import exceptions

    try:
        return _blob(path).download_as_text()
    except exceptions.NotFound:
        raise FileNotFoundError(str(path)) from None


def move(src: epath.Path, dst: epath.Path) -> None:
    """Renames a folder; on a bucket, copies each object and then deletes the originals. A move
    interrupted there leaves the source whole or partly deleted, never a file half-copied."""
    if not is_remote(src):
        src.rename(dst)
        return
    for name in files(src):
        (dst / name).write_bytes((src / name).read_bytes())
    src.rmtree()


def files(root: epath.Path, prefix: str = "") -> Iterator[str]:
    """Names of all files under `root`, relative to it, on any store (GCS has no recursive glob)."""
    for child in sorted(root.iterdir()):
        if child.is_dir():
            yield from files(child, f"{prefix}{child.name}/")
        else:
            yield f"{prefix}{child.name}"


def _bucket(path: epath.Path):
    from google.cloud import storage

    return storage.Client().bucket(str(path).removeprefix("gs://").split("/", 1)[0])


def _blob(path: epath.Path):
    """The object at gs://bucket/name."""
    return _bucket(path).blob(str(path).removeprefix("gs://").split("/", 1)[1])


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "renewed": time.time()}


def _gone(holder: dict) -> str | None:
    """Why a lease's holder no longer holds it, or None while it may."""
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return f"process {holder['pid']} of this host, which held it, has ended"
        except (PermissionError, KeyError, ValueError):
            pass
    age = time.time() - float(holder.get("renewed", 0))
    return f"it was last renewed {age:.0f} s ago" if age > LEASE_S else None


class LeaseLock:
    """The lease on a workdir in a bucket, for the life of the run; `close` gives it back."""

    def __init__(self, workdir: epath.Path):
        from google.api_core import exceptions

        self.workdir = workdir
        self._precondition, self._not_found = exceptions.PreconditionFailed, exceptions.NotFound
        self._blob = _blob(workdir / ".lock")
        self.lost: str | None = None
        self.note: str | None = None  # a lease taken over, for the trainer to tell
        self._stop = threading.Event()
        self._take()
        self._renewer = threading.Thread(target=self._renew, name="digitjax-lease", daemon=True)
        self._renewer.start()

    def _take(self) -> None:
        for _ in range(3):  # the holder may give the lease back between our two requests
            try:
                self._blob.upload_from_string(json.dumps(_holder()), if_generation_match=0)
                return
            except self._precondition:
                pass
            try:
                self._blob.reload()
                holder, generation = json.loads(self._blob.download_as_text()), self._blob.generation
            except self._not_found:
                continue
            self._take_over(holder, generation)
            return
        raise UserError(f"{self.workdir}: its lease changed hands three times while this run asked; try again.")

    def _take_over(self, holder: dict, generation: int) -> None:
        why = _gone(holder)
        if why is None:
            age = time.time() - float(holder.get("renewed", 0))
            raise UserError(
                f"{self.workdir} is in use by process {holder.get('pid')} on {holder.get('host')}, which renewed its "
                f"lease {age:.0f} s ago; nothing was changed. Wait for it to finish (or stop it), or train into "
                f"another --workdir. A lease its holder stops renewing expires after {LEASE_S:.0f} s."
            )
        try:
            self._blob.upload_from_string(json.dumps(_holder()), if_generation_match=generation)
        except self._precondition:
            raise UserError(f"{self.workdir} was taken by another run just now; nothing was changed.") from None
        self.note = f"Took over the lease on {self.workdir}: {why}."

    def _renew(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(LEASE_S / 4):
            try:
                self._blob.upload_from_string(json.dumps(_holder()), if_generation_match=self._blob.generation)
                last = time.monotonic()
            except self._precondition:
                self.lost = f"another run took over the lease on {self.workdir}"
                return
            except Exception as e:  # a network error: the lease holds until LEASE_S has passed
                if time.monotonic() - last > LEASE_S:
                    self.lost = f"the lease on {self.workdir} could not be renewed for {LEASE_S:.0f} s ({e})"
                    return

    def claim(self) -> None:
        """The lease names its owner from the start."""

    def check(self) -> None:
        """Raises when the lease was lost, before the run writes anything more."""
        if self.lost:
            raise UserError(f"Stopped: {self.lost}. Nothing more was saved by this process.")

    def close(self) -> None:
        self._stop.set()
        self._renewer.join()
        if self.lost is None:
            try:
                self._blob.delete(if_generation_match=self._blob.generation)
            except self._precondition:
                pass
