"""A teacher's scores of an ImagePool as a table on disk: keyed, shared, chunked, resumable.

The table is a folder ``<cache>/scores/<key>/`` of ``chunk-NNNNN.parquet``
files (``SCORES_SCHEMA``) beside ``meta.json``. ``key`` is a hash of what the
scores depend on: the teacher's weights (sha256), the pool's fingerprint
(count + sha256 of paths, sizes, mtimes), and the scoring settings (top-P,
image shape, normalisation, precision, the decoding rules' version). Any
stage, run or sweep trial that scores the same pool with the same teacher
and settings finds the same folder and reuses it; a changed
teacher, pool or setting gives another key, so a table is never reused for
something it was not computed from.

Each chunk's parquet file carries the same record in its key-value metadata
(``mentor.scores``), so a table copied out of the cache or downloaded from
MLflow still says what it is.

A chunk is written under a temporary name and renamed, so a chunk on disk is
complete; an interrupted scoring resumes after its last written chunk. Under
torchrun each rank scores chunks ``rank, rank + world, ...`` into the shared
folder (one machine, or a shared filesystem), then every rank reads them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from torch import nn

from .data.pool import ImagePool
from .engine import checkpoint, distributed
from .engine.runtime import Runtime, autocast
from .tables import SCORES_SCHEMA

SKIPPED_SCHEMA = {"path": pl.Utf8(), "error": pl.Utf8()}
SCORING_VERSION = 1  # bump when decoding or scoring rules change: old tables then no longer match
METADATA_KEY = "mentor.scores"


def weights_sha256(model: nn.Module) -> str:
    """A hash of a model's state (names, shapes, bytes): the teacher's identity."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def pool_fingerprint(pool: ImagePool) -> dict:
    """Count and sha256 of (path, size, mtime) in the pool's order (an image's index is its position)."""
    h = hashlib.sha256()
    for path in pool.paths:
        try:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0missing\n".encode())
    return {"count": len(pool), "sha256": h.hexdigest()}


def table_key(meta: dict) -> str:
    """The cache folder's name: a hash of everything the scores depend on."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class ScoresTable:
    """A complete scores table on disk, and whether this call computed it or found it."""

    folder: Path
    meta: dict
    reused: bool
    scored_chunks: int  # chunks this process scored (0 when reused)

    @property
    def chunks(self) -> list[Path]:
        return sorted(self.folder.glob("chunk-*.parquet"))

    def scan(self) -> pl.LazyFrame:
        """The scores, lazily: selection strategies and diagnostics read only what they need."""
        return pl.scan_parquet(self.chunks, schema=SCORES_SCHEMA)

    def skipped(self) -> pl.DataFrame:
        """Files the decoder could not read: their paths and errors."""
        files = sorted(self.folder.glob("chunk-*.skipped.csv"))
        if not files:
            return pl.DataFrame(schema=SKIPPED_SCHEMA)
        return pl.concat([pl.read_csv(f, schema=SKIPPED_SCHEMA) for f in files])


def score_pool(model: nn.Module, pool: ImagePool, cache: Path, *, channels: int, size: tuple[int, int],
               top_p: int, batch_size: int, mean, std, runtime: Runtime, chunk_size: int = 50_000,
               teacher: str = "", pipeline: dict | None = None) -> ScoresTable:
    """The table of ``model``'s top-``top_p`` over ``pool``: found under ``cache``, resumed, or scored.

    ``pipeline``: the model's own input pipeline where it is not the data's (part of the key).

    ``teacher`` describes the teacher for people (a stage, a URI); it is
    recorded but not part of the key, which uses the weights themselves.
    """
    precision = str(runtime.autocast_dtype).removeprefix("torch.") if runtime.autocast_dtype else "float32"
    meta = {"teacher_sha256": weights_sha256(model), "pool": pool_fingerprint(pool), "top_p": top_p,
            "image_size": list(size), "channels": channels, "mean": [float(m) for m in mean],
            "std": [float(s) for s in std], "precision": precision, "scoring_version": SCORING_VERSION}
    if pipeline is not None:
        meta["pipeline"] = pipeline
    folder = Path(cache) / table_key(meta)
    meta_file = folder / "meta.json"

    def prepare() -> tuple[bool, int]:
        """Rank 0: (whether the table is complete already, its chunk size); the folder is ready to fill.

        The chunk size is not part of the key (it changes no score): the process
        that starts a table picks it, and whoever resumes the table keeps it."""
        old = _read_meta(meta_file)
        size_of_table = int(old["chunk_size"]) if old and old.get("chunk_size") else chunk_size
        n = (len(pool) + size_of_table - 1) // size_of_table
        if old is not None and old.get("complete") and len(list(folder.glob("chunk-*.parquet"))) == n:
            return True, size_of_table
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(meta_file, {**meta, "chunk_size": size_of_table, "teacher": teacher, "key": folder.name,
                                "complete": False})
        return False, size_of_table

    complete, chunk_size = distributed.on_main(prepare)
    record = {**meta, "chunk_size": chunk_size, "teacher": teacher, "key": folder.name}
    if complete:
        print(f"reusing pseudo-label table {folder} (same teacher {meta['teacher_sha256'][:12]}, "
              f"pool of {len(pool)} files, same settings): not scoring again", file=sys.stderr)
        return ScoresTable(folder, record, reused=True, scored_chunks=0)
    n_chunks = (len(pool) + chunk_size - 1) // chunk_size
    done = sum((folder / f"chunk-{c:05d}.parquet").exists() for c in range(n_chunks))
    if done and distributed.is_main():
        print(f"resuming pseudo-label table {folder}: {done} of {n_chunks} chunks already scored",
              file=sys.stderr)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=runtime.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=runtime.device).view(1, -1, 1, 1)
    model.eval()
    scored = 0
    for chunk in range(distributed.rank(), n_chunks, distributed.world_size()):
        if (folder / f"chunk-{chunk:05d}.parquet").exists():
            continue  # resumed: this chunk is complete
        _score_chunk(model, pool, folder, chunk, chunk_size, channels, size, top_p, batch_size,
                     mean_t, std_t, runtime, record)
        scored += 1
    distributed.barrier()  # every rank's chunks are on disk
    if distributed.is_main():
        _write_json(meta_file, {**record, "complete": True})
    distributed.barrier()
    return ScoresTable(folder, record, reused=False, scored_chunks=scored)


@torch.no_grad()
def _score_chunk(model, pool, folder, chunk, chunk_size, channels, size, top_p, batch_size, mean_t, std_t,
                 runtime, record) -> None:
    indices, classes, probs, skipped = [], [], [], []
    for x, index, bad in pool.batches(channels, size, batch_size, runtime.loader_workers,
                                      start=chunk * chunk_size, stop=(chunk + 1) * chunk_size):
        skipped += bad
        if x is None:
            continue
        x = x.to(runtime.device, non_blocking=True).float().div_(255.0).sub_(mean_t).div_(std_t)
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
    skipped_table = pl.DataFrame(skipped, schema=SKIPPED_SCHEMA, orient="row")
    checkpoint.write_atomic(folder / f"chunk-{chunk:05d}.skipped.csv", skipped_table.write_csv)
    record = {**record, "chunk": chunk, "rank": distributed.rank()}
    # the parquet file last: it marks the chunk done
    checkpoint.write_atomic(folder / f"chunk-{chunk:05d}.parquet",
                            lambda handle: table.write_parquet(handle, metadata={METADATA_KEY: json.dumps(record)}))


def table_record(path: str | Path) -> dict:
    """The ``mentor.scores`` record a chunk's parquet metadata holds (teacher, pool, settings)."""
    raw = pl.read_parquet_metadata(path).get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path} is not a mentor scores table (no {METADATA_KEY} metadata)")
    return json.loads(raw)


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or half-written: the table is (re)built


def _write_json(path: Path, data: dict) -> None:
    checkpoint.write_text_atomic(json.dumps(data, indent=1), path)
