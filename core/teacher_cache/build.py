"""Finding, resuming or building a teacher cache: the teacher over every recorded view, once.

One process builds a cache at a time (a lock on its folder): a second sweep
worker that wants the same cache waits and then reads it. Building goes
view by view in chunks of rows; each chunk's outputs are written into the
preallocated memory-mapped files, flushed, and then marked done, so a build
killed at any moment resumes after its last marked chunk. The files are
allocated at full size before the first forward, so a disk too small fails
before any work, with the size needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (one builder at a time is then the user's to ensure)
    fcntl = None

import torch
from torch import nn

from ..config.schema import TeacherCacheConfig
from ..data.augment import AugmentDraw, BatchAugment
from ..data.loader import Batches
from ..data.types import ImageSet
from ..data.views import RecordedViews, draw_views
from ..engine import checkpoint, distributed
from ..engine.runtime import Runtime, autocast
from ..features import FeatureTap
from ..pool_scores import weights_sha256
from .cache import TeacherCache
from .files import ArrayFile, human_bytes, layout
from .identity import FORMAT, cache_key, data_fingerprint, why_not_reused

CHUNK_ROWS = 8192  # rows of one view between two progress markers


class TeacherCacheError(RuntimeError):
    """A cache that cannot be built (too little disk, outputs beyond float16): the run stops, exit 2."""


def _views(n: int) -> str:
    return "1 view" if n == 1 else f"{n} views"


def _say(message: str) -> None:
    if distributed.is_main():
        print(f"teacher cache: {message}", file=sys.stderr)


def open_cache(teacher: nn.Module, images: torch.Tensor, *, config: TeacherCacheConfig, augment: BatchAugment,
               augment_record: dict, nodes: list[str], feature_shapes: dict[str, tuple[int, ...]], classes: int,
               root: Path, origin: str, teacher_label: str, mean, std, runtime: Runtime, batch_size: int,
               stage_seed: int, pipeline: dict | None = None) -> TeacherCache | str:
    """The cache of ``teacher`` over recorded views of ``images``: found, resumed or built under ``root``.

    ``pipeline``: the teacher's own input pipeline where it is not the data's (part of the key: the same
    weights fed another way give other outputs).

    Returns the ``TeacherCache`` a step reads, or, when the cache would exceed
    ``config.max_gb``, the reason it is not built (the teacher then runs live).
    """
    views = config.views if augment.active else 1
    store = config.store
    precision = str(runtime.autocast_dtype).removeprefix("torch.") if runtime.autocast_dtype else "float32"
    top_k = config.top_k if config.top_k is not None and config.top_k < classes else None
    record = {"format": FORMAT, "teacher_sha256": weights_sha256(teacher), "data": data_fingerprint(images),
              "augment": augment_record if augment.active else None, "views": views, "seed": config.seed,
              "nodes": list(nodes), "classes": classes, "store": store, "top_k": top_k, "precision": precision,
              "mean": [float(m) for m in mean], "std": [float(s) for s in std]}
    if pipeline is not None:
        record["pipeline"] = pipeline
    arrays = layout(views, len(images), classes, store, record["top_k"], feature_shapes)
    total = sum(a.nbytes for a in arrays.values())
    if total > config.max_gb * 1e9:
        biggest = max(arrays.items(), key=lambda item: item[1].nbytes)
        return (f"{_views(views)} of {len(images):,} images would take {human_bytes(total)} (the largest part, "
                f"{biggest[0]}, {human_bytes(biggest[1].nbytes)}), more than teacher_cache.max_gb "
                f"({config.max_gb:g} GB): raise max_gb, lower views, or set top_k")
    key = cache_key(record)
    folder = Path(root) / key

    def find_or_build() -> dict:
        return _find_or_build(folder, record, arrays, teacher, images, augment, nodes, origin, teacher_label,
                              mean, std, runtime, batch_size, config)

    meta = distributed.on_main(find_or_build)
    draws = torch.load(folder / "views.pt", weights_only=True)
    return TeacherCache.open(folder, meta, {role: ArrayFile.from_json(a) for role, a in meta["arrays"].items()},
                             augment, draw_class(augment)(**draws), views, stage_seed, runtime.device)


def draw_class(augment) -> type[AugmentDraw]:
    """The draw type an augmenter returns (``AugmentDraw``, or another modality's subclass): what stored draws
    are rebuilt as."""
    return type(augment.draw(0, None, "cpu")) if hasattr(augment, "draw") else AugmentDraw


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the folder's lock: one builder at a time; another process waits, then finds the cache built."""
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process building {folder}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def _find_or_build(folder, record, arrays, teacher, images, augment, nodes, origin, teacher_label, mean, std,
                   runtime, batch_size, config) -> dict:
    with _locked(folder):
        meta = _read_meta(folder)
        problems = [p for a in arrays.values() if (p := a.size_problem(folder))]
        if meta is not None and meta.get("complete") and not problems and (folder / "views.pt").is_file():
            _say(f"reusing {folder} ({_views(record['views'])} of {len(images):,} images, teacher "
                 f"{record['teacher_sha256'][:12]}): the teacher does not run")
            return {**meta, "reused": True}
        n_chunks = -(-len(images) // CHUNK_ROWS)
        done_dir = folder / "done"
        if meta is not None and meta.get("record") == record and not problems:
            done = sum(1 for _ in done_dir.glob("*")) if done_dir.is_dir() else 0
            _say(f"resuming {folder}: {done} of {record['views'] * n_chunks} chunks were built before")
        else:
            if meta is not None and meta.get("complete"):
                why = "its files are damaged: " + "; ".join(problems)
            elif meta is not None:
                why = "a build of it was interrupted before its files were allocated"
            else:
                why = why_not_reused(folder.parent, record, origin)
            _say(f"building {folder} ({_views(record['views'])} of {len(images):,} images, "
                 f"{human_bytes(sum(a.nbytes for a in arrays.values()))}): {why}")
            shutil.rmtree(done_dir, ignore_errors=True)
            _allocate(folder, arrays)
        meta = {"key": folder.name, "record": record, "origin": origin, "teacher": teacher_label,
                "arrays": {role: a.as_json() for role, a in arrays.items()}, "chunk_rows": CHUNK_ROWS,
                "complete": False}
        checkpoint.write_text_atomic(json.dumps(meta, indent=1), folder / "meta.json")
        if not (folder / "views.pt").is_file():
            draws = draw_views(augment, len(images), record["views"], config.seed)
            checkpoint.save_atomic(draws.tensors(), folder / "views.pt")
        draws_saved = torch.load(folder / "views.pt", weights_only=True)
        t0 = time.perf_counter()
        forwards = _run_teacher(folder, arrays, teacher, images, augment, draws_saved, nodes, mean, std, runtime,
                                batch_size, record)
        seconds = time.perf_counter() - t0
        meta = {**meta, "complete": True, "built_seconds": round(seconds, 3)}
        checkpoint.write_text_atomic(json.dumps(meta, indent=1), folder / "meta.json")
        _say(f"built {folder} in {seconds:.1f} s ({forwards:,} teacher forwards of one image)")
        return {**meta, "reused": False}


def _allocate(folder: Path, arrays: dict[str, ArrayFile]) -> None:
    """Every array file at full size; too little disk is an error before any forward, with the size needed."""
    need = sum(a.nbytes - ((folder / a.name).stat().st_size if (folder / a.name).is_file() else 0)
               for a in arrays.values())
    free = shutil.disk_usage(folder).free
    if need > free:
        raise TeacherCacheError(
            f"{folder} needs {human_bytes(need)} more on its disk, which has {human_bytes(free)} free: free space, "
            "point tracking.cache_dir at a larger disk, or lower teacher_cache.views / set teacher_cache.top_k")
    try:
        for a in arrays.values():
            a.allocate(folder)
    except OSError as exc:
        raise TeacherCacheError(f"{folder}: cannot allocate {human_bytes(need)}: {exc.strerror or exc}") from None


@torch.no_grad()
def _run_teacher(folder, arrays, teacher, images, augment, draws, nodes, mean, std, runtime, batch_size,
                 record) -> int:
    """The teacher over every chunk of every view not yet marked done; returns the images it ran on.

    The batches are the training loop's own (``Batches`` with recorded views: every row shows view ``v``
    in "epoch" ``v`` when its offset is 0), so the teacher sees exactly the pixels the student will."""
    device = runtime.device
    teacher = teacher.to(device).eval()
    tap = FeatureTap(teacher, nodes, "teacher")
    maps = {role: a.map(folder, writable=True) for role, a in arrays.items()}
    dtype = torch.float16 if record["store"] == "float16" else torch.float32
    n, views = len(images), record["views"]
    recorded = RecordedViews(augment, draw_class(augment)(**draws), torch.zeros(n, dtype=torch.long), views)
    rows_set = ImageSet(images, torch.arange(n))
    n_chunks = -(-n // CHUNK_ROWS)
    done_dir = folder / "done"
    forwards = 0
    for v in range(views):
        for c in range(n_chunks):
            marker = done_dir / f"{v:05d}-{c:05d}"
            if marker.exists():
                continue
            chunk = torch.arange(c * CHUNK_ROWS, min(n, (c + 1) * CHUNK_ROWS))
            batches = Batches(rows_set.subset(chunk), batch_size, shuffle=False, mean=mean, std=std, device=device,
                              placement="device", views=recorded.subset(chunk))  # a chunk fits the device
            for x, rows in batches.epoch(v):
                if runtime.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(runtime):
                    logits, features = tap(x)
                outputs = {"logits": logits, **{f"feature:{node}": features[node] for node in nodes}}
                _write(maps, outputs, v, rows.cpu().numpy(), dtype, record["top_k"])
                forwards += len(rows)
            for m in maps.values():
                m.flush()
            checkpoint.write_text_atomic("", marker)
    del maps
    return forwards


def _write(maps, outputs: dict[str, torch.Tensor], v: int, rows, dtype: torch.dtype, top_k: int | None) -> None:
    def stored(t: torch.Tensor, what: str) -> torch.Tensor:
        out = t.detach().to(dtype)
        if dtype == torch.float16 and not bool(torch.isfinite(out).all()) and bool(torch.isfinite(t).all()):
            raise TeacherCacheError(
                f"the teacher's {what} reach {float(t.abs().max()):.4g}, beyond float16's range (65504): "
                "set teacher_cache.store: float32")
        return out.cpu()

    logits = outputs.pop("logits").float()
    if "logits" in maps:
        maps["logits"][v, rows] = stored(logits, "logits").numpy()
    else:
        values, classes = logits.topk(top_k, dim=1)
        rest = (logits.sum(1) - values.sum(1)) / (logits.shape[1] - top_k)
        maps["top_values"][v, rows] = stored(values, "logits").numpy()
        maps["top_classes"][v, rows] = classes.cpu().numpy().astype(maps["top_classes"].dtype)
        maps["rest_mean"][v, rows] = stored(rest, "logits").numpy()
    for role, t in outputs.items():
        maps[role][v, rows] = stored(t.float(), role.removeprefix("feature:") + " features").numpy()
