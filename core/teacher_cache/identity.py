"""What a teacher cache's contents depend on, as a record and its key; and why a cache was not reused.

The key hashes the teacher's weights, the training images, the augmentation,
the view count and seed, the cached feature nodes, and how outputs are
computed and stored (precision, normalisation, float16/float32, top-k). The
same record gives the same folder; anything else another folder, so a cache
is never used for what it was not computed from. The stage that asked for a
cache (``origin``) is recorded beside the key, not in it: when a stage gets a
new key, its previous cache says what changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

FORMAT = 1  # bump when the files' layout or the way outputs are computed changes

_WHAT = {
    "teacher_sha256": "the teacher's weights changed (retrained, or another checkpoint)",
    "data": "the training images changed",
    "augment": "the augmentation changed",
    "views": "the view count changed",
    "seed": "teacher_cache.seed changed",
    "nodes": "the teacher features the losses read changed",
    "classes": "the number of classes changed",
    "store": "teacher_cache.store changed",
    "top_k": "teacher_cache.top_k changed",
    "precision": "the precision changed",
    "mean": "the normalisation changed",
    "std": "the normalisation changed",
    "format": "mentor's cache format changed",
}


def data_fingerprint(images: torch.Tensor) -> dict:
    """Count, shape and sha256 of the uint8 training images, in row order (a row's view is keyed by its row)."""
    t = images.detach().cpu().contiguous()
    digest = hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"").hexdigest()
    return {"count": int(t.shape[0]), "shape": list(t.shape[1:]), "dtype": str(t.dtype).removeprefix("torch."),
            "sha256": digest}


def cache_key(record: dict) -> str:
    """The cache folder's name: a hash of the record."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:24]


def why_not_reused(root: Path, record: dict, origin: str) -> str:
    """Why the stage ``origin`` builds a cache: what differs from the last cache it had, if any."""
    previous = []
    for meta_file in root.glob("*/meta.json"):
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("origin") == origin and meta.get("key") != cache_key(record):
            previous.append((meta_file.stat().st_mtime, meta))
    if not previous:
        return "no cache for this teacher, data and settings yet"

    def changes(meta: dict) -> list[str]:
        old, found = meta.get("record", {}), []
        for field, what in _WHAT.items():
            if old.get(field) != record.get(field) and what not in found:
                if field == "views":
                    what += f" ({old.get(field)} -> {record.get(field)})"
                found.append(what)
        return found

    # the closest earlier cache of this stage names what changed; the newest of equally close ones
    _, meta = min(previous, key=lambda item: (len(changes(item[1])), -item[0]))
    return f"not reusing cache {meta.get('key')}: " + ("; ".join(changes(meta)) or "its settings differ")
