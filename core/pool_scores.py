"""Scoring an ImagePool in chunks to parquet: reused when nothing changed, resumed when interrupted.

The table lives in a folder of ``chunk-NNNNN.parquet`` files (``SCORES_SCHEMA``)
next to ``meta.json``: the teacher's weights sha256, the pool's fingerprint
(count + sha256 of paths, sizes, mtimes) and the scoring settings. A chunk is
written to a temporary name and renamed, so a chunk on disk is complete; a
run that stops mid-way resumes after its last chunk. When ``meta.json``
matches and says ``complete``, the table is reused as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import polars as pl
import torch
from torch import nn

from .data.pool import ImagePool
from .engine.runtime import Runtime, autocast
from .tables import SCORES_SCHEMA

SKIPPED_SCHEMA = {"path": pl.Utf8(), "error": pl.Utf8()}


def weights_sha256(model: nn.Module) -> str:
    """A hash of a model's state (names, shapes, bytes): the teacher's identity."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def pool_fingerprint(pool: ImagePool) -> dict:
    """Count and sha256 of (path, size, mtime) over the sorted paths."""
    h = hashlib.sha256()
    for path in sorted(pool.paths):
        try:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0missing\n".encode())
    return {"count": len(pool), "sha256": h.hexdigest()}


def score_pool(model: nn.Module, pool: ImagePool, folder: Path, *, channels: int, size: tuple[int, int],
               top_p: int, batch_size: int, mean, std, runtime: Runtime,
               chunk_size: int = 50_000) -> tuple[pl.LazyFrame, pl.DataFrame]:
    """(the scores as a LazyFrame over the chunk files, the skipped files' paths and errors)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"teacher_sha256": weights_sha256(model), "pool": pool_fingerprint(pool), "top_p": top_p,
            "image_size": list(size), "channels": channels, "chunk_size": chunk_size}
    meta_file = folder / "meta.json"
    old = json.loads(meta_file.read_text()) if meta_file.exists() else None
    if old is not None and {k: v for k, v in old.items() if k != "complete"} == meta:
        if old.get("complete"):
            print(f"reusing pseudo-label table {folder} (same teacher, pool and settings)", file=sys.stderr)
            return _result(folder)
    else:
        for stale in folder.glob("chunk-*"):
            stale.unlink()
        meta_file.write_text(json.dumps({**meta, "complete": False}, indent=1))
    mean_t = torch.tensor(mean, dtype=torch.float32, device=runtime.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=runtime.device).view(1, -1, 1, 1)
    model.eval()
    n_chunks = (len(pool) + chunk_size - 1) // chunk_size
    for chunk in range(n_chunks):
        target = folder / f"chunk-{chunk:05d}.parquet"
        if target.exists():
            continue  # resumed: this chunk is complete
        _score_chunk(model, pool, folder, chunk, chunk_size, channels, size, top_p, batch_size,
                     mean_t, std_t, runtime)
    meta_file.write_text(json.dumps({**meta, "complete": True}, indent=1))
    return _result(folder)


@torch.no_grad()
def _score_chunk(model, pool, folder, chunk, chunk_size, channels, size, top_p, batch_size, mean_t, std_t,
                 runtime) -> None:
    indices, classes, probs, skipped = [], [], [], []
    for x, index, bad in pool.batches(channels, size, batch_size, runtime.loader_workers,
                                      start=chunk * chunk_size, stop=(chunk + 1) * chunk_size):
        skipped += bad
        if x is None:
            continue
        x = x.to(runtime.device).float().div_(255.0).sub_(mean_t).div_(std_t)
        with autocast(runtime):
            logits = model(x)
        p, c = logits.float().softmax(1).topk(min(top_p, logits.shape[1]), dim=1)
        indices.append(index)
        classes.append(c.cpu())
        probs.append(p.cpu())
    if indices:
        index, c, p = torch.cat(indices), torch.cat(classes), torch.cat(probs)
        k = c.shape[1]
        table = pl.DataFrame({"index": index.repeat_interleave(k).numpy(),
                              "rank": torch.arange(k).repeat(len(index)).numpy(),
                              "class": c.reshape(-1).numpy(), "prob": p.reshape(-1).numpy()}, schema=SCORES_SCHEMA)
    else:
        table = pl.DataFrame(schema=SCORES_SCHEMA)
    pl.DataFrame(skipped, schema=SKIPPED_SCHEMA, orient="row").write_csv(folder / f"chunk-{chunk:05d}.skipped.csv")
    tmp = folder / f".chunk-{chunk:05d}.parquet.tmp"
    table.write_parquet(tmp)
    tmp.replace(folder / f"chunk-{chunk:05d}.parquet")  # the parquet file last: it marks the chunk done


def _result(folder: Path) -> tuple[pl.LazyFrame, pl.DataFrame]:
    files = sorted(folder.glob("chunk-*.skipped.csv"))
    skipped = pl.concat([pl.read_csv(f, schema=SKIPPED_SCHEMA) for f in files]) if files else \
        pl.DataFrame(schema=SKIPPED_SCHEMA)
    skipped.write_csv(folder / "skipped.csv")
    return pl.scan_parquet(sorted(folder.glob("chunk-*.parquet"))), skipped
