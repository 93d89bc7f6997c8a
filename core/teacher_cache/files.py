"""A teacher cache folder's files: one flat binary array per output, memory-mapped.

``<cache_dir>/teacher/<key>/``:

- ``meta.json``: the key's record, the stage that built it, each file's dtype and
  shape, and ``complete`` once every view is written
- ``views.pt``: the recorded augmentation draws, ``[V, N, ...]`` tensors
- ``logits.bin`` ``[V, N, C]``, or with ``top_k``: ``top_values.bin`` ``[V, N, k]``,
  ``top_classes.bin`` ``[V, N, k]`` and ``rest_mean.bin`` ``[V, N]``
- ``feature-<i>.bin`` ``[V, N, *shape]``: the i-th cached teacher node
- ``done/<view>-<chunk>``: an empty marker per written chunk; a killed build resumes after them
- ``.lock``: held by the process that builds
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NUMPY = {"float16": np.float16, "float32": np.float32, "int16": np.int16, "int32": np.int32}


@dataclass(frozen=True)
class ArrayFile:
    """One output array: its file name, numpy dtype name and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(NUMPY[self.dtype]).itemsize

    def as_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict) -> ArrayFile:
        return cls(data["name"], data["dtype"], tuple(data["shape"]))

    def size_problem(self, folder: Path) -> str | None:
        """Why the file on disk is not this array (absent, or the wrong size), or None."""
        path = folder / self.name
        if not path.is_file():
            return f"{self.name} is missing"
        if path.stat().st_size != self.nbytes:
            return f"{self.name} is {path.stat().st_size:,} bytes, not {self.nbytes:,}"
        return None

    def allocate(self, folder: Path) -> None:
        """Create the file at its full size, its blocks reserved (a full disk fails here, not mid-build)."""
        path = folder / self.name
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, self.nbytes)
            if hasattr(os, "posix_fallocate") and self.nbytes:
                os.posix_fallocate(fd, 0, self.nbytes)
        finally:
            os.close(fd)

    def map(self, folder: Path, writable: bool = False) -> np.memmap:
        # "c": copy-on-write, so torch.from_numpy gets a writable array; nothing is written back
        return np.memmap(folder / self.name, dtype=NUMPY[self.dtype], mode="r+" if writable else "c",
                         shape=self.shape)


def layout(views: int, n: int, classes: int, store: str, top_k: int | None,
           features: dict[str, tuple[int, ...]]) -> dict[str, ArrayFile]:
    """The arrays of a cache: logits (full, or top-k) and one per feature node, by role."""
    arrays: dict[str, ArrayFile] = {}
    if top_k is None or top_k >= classes:
        arrays["logits"] = ArrayFile("logits.bin", store, (views, n, classes))
    else:
        index = "int16" if classes <= np.iinfo(np.int16).max else "int32"
        arrays["top_values"] = ArrayFile("top_values.bin", store, (views, n, top_k))
        arrays["top_classes"] = ArrayFile("top_classes.bin", index, (views, n, top_k))
        arrays["rest_mean"] = ArrayFile("rest_mean.bin", store, (views, n))
    for i, (node, shape) in enumerate(features.items()):
        arrays[f"feature:{node}"] = ArrayFile(f"feature-{i}.bin", store, (views, n, *shape))
    return arrays


def human_bytes(n: float) -> str:
    """``1234567`` -> ``1.2 MB``."""
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            return f"{n:,.1f} {unit}"
    return f"{n / 1000:,.1f} TB"
