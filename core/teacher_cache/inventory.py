"""What the shared cache folder holds, and removing entries from it: ``mentor cache``.

Both kinds of entry are folders named by their key with a ``meta.json``:
teacher caches (``<cache_dir>/teacher/<key>/``, this package) and pseudo-label
score tables (``<cache_dir>/scores/<key>/``, mentor.pool_scores). Nothing
else refers to them: a removed entry is built again by the next run that
needs it. An entry whose build holds its lock is never removed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (one builder at a time is then the user's to ensure)
    fcntl = None


@dataclass
class Entry:
    kind: str  # "teacher" or "scores"
    key: str
    folder: Path
    origin: str  # the stage that built it (teacher caches), or the teacher's description (score tables)
    contents: str  # what it holds, in words
    bytes: int
    complete: bool


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _describe(kind: str, meta: dict) -> tuple[str, str]:
    if kind == "teacher":
        record = meta.get("record", {})
        data = record.get("data", {})
        nodes = record.get("nodes") or []
        what = (f"{record.get('views')} view(s) x {data.get('count', '?'):,} images, "
                f"{record.get('classes')} logits{' + ' + ', '.join(nodes) if nodes else ''}, {record.get('store')}")
        return meta.get("origin", ""), what
    pool = meta.get("pool", {})
    return meta.get("teacher", ""), f"top-{meta.get('top_p')} scores of {pool.get('count', '?'):,} pool images"


def entries(root: Path) -> list[Entry]:
    """Every teacher cache and score table under ``root`` (a ``tracking.cache_dir``)."""
    found = []
    for kind in ("teacher", "scores"):
        for folder in sorted((Path(root) / kind).glob("*/")):
            try:
                meta = json.loads((folder / "meta.json").read_text())
            except (OSError, ValueError):
                meta = {}
            origin, contents = _describe(kind, meta) if meta else ("", "no meta.json: an interrupted start")
            found.append(Entry(kind, folder.name, folder, origin, contents, _size(folder),
                               bool(meta.get("complete"))))
    return found


def busy(folder: Path) -> bool:
    """Whether a process is building this entry now (it holds the folder's lock)."""
    lock = folder / ".lock"
    if fcntl is None or not lock.is_file():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def remove(entry: Entry) -> None:
    shutil.rmtree(entry.folder)
