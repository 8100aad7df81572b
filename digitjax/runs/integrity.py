"""Run integrity: each checkpoint step's manifest, and the one policy for damaged steps.

Every step holds `digitjax_manifest.json`, the size and sha256 of every file of its items,
written before Orbax commits the step. A step whose files no longer match it
(truncated, deleted, changed) is damaged, and the policy, for training and inference alike:
a damaged step is never used; the newest intact step stands in for it and the user is told
which steps were passed over and why; when no step is intact, nothing is used or changed and
the error says what to do.
"""

from __future__ import annotations

import hashlib
import json

from etils import epath

from digitjax.errors import UserError
from digitjax.runs import objectstore, orbax_internals

MANIFEST = "digitjax_manifest.json"


def _sha256(path: epath.Path) -> str:
    with epath.Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(step_dir: epath.Path, step: int, items: tuple[str, ...]) -> None:
    """Records the size and sha256 of every file of the step's items, atomically."""
    step_dir, files = epath.Path(step_dir), {}
    for item in items:
        if (step_dir / item).is_dir():
            for name in objectstore.files(step_dir / item, f"{item}/"):
                path = step_dir / name
                files[name] = [path.stat().length, _sha256(path)]
    objectstore.write_text(step_dir / MANIFEST, json.dumps({"step": step, "files": files}))


def damage(step_dir: epath.Path) -> str | None:
    """Why the step's files do not match its manifest, or None when they all do."""
    step_dir = epath.Path(step_dir)
    try:
        manifest = json.loads((step_dir / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"it has no {MANIFEST} (an interrupted copy, or written by an older digitjax)"
    except (ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is unreadable"
    for name, (size, sha256) in manifest.items():
        path = step_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if (actual := path.stat().length) != size:
            return f"{name} has {actual:,} bytes instead of {size:,} (truncated?)"
        if _sha256(path) != sha256:
            return f"{name} does not hold what was written (sha256 differs)"
    return None


def committed_steps(root: epath.Path) -> list[int]:
    """Committed step numbers under `root` (a run's checkpoints folder), newest first."""
    root = epath.Path(root)
    if not root.is_dir():
        return []
    return sorted((int(p.name) for p in root.iterdir() if orbax_internals.is_committed(p)), reverse=True)


def describe(damaged: dict[int, str]) -> str:
    return "; ".join(f"step {step}: {why}" for step, why in damaged.items())


def usable_step(root: epath.Path, candidates: list[int], fix: str) -> tuple[int, dict[int, str]]:
    """The first intact step of `candidates` (most wanted first) and why each one before it is
    damaged; a UserError ending in `fix` when none is intact."""
    damaged = {}
    for step in candidates:
        why = damage(epath.Path(root) / str(step))
        if why is None:
            return step, damaged
        damaged[step] = why
    raise UserError(f"Every checkpoint in {root} is damaged ({describe(damaged)}). {fix}")


def move_aside(step_dir: epath.Path, into: epath.Path) -> epath.Path:
    """Moves a damaged step out of Orbax's sight, keeping its files for a person to look at."""
    into.mkdir(exist_ok=True)
    target, n = into / step_dir.name, 1
    while target.exists():
        n += 1
        target = into / f"{step_dir.name}-{n}"
    objectstore.move(step_dir, target)
    return target
