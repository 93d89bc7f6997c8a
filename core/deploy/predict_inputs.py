"""What ``mentor predict`` reads: image files, folders, glob patterns and .parquet/.csv lists, in any mix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.pool import IMAGE_EXTENSIONS, find_images

LIST_SUFFIXES = (".parquet", ".csv")


class PredictError(Exception):
    """A user mistake in ``mentor predict``: a missing model or image list, no record, a size mismatch."""


GLOB_CHARACTERS = "*?["


@dataclass
class PredictBatch:
    """One batch of ``mentor predict``'s inputs: raw examples (in the form a data source gives them), the
    name each row is reported under, and the inputs that could not be read (name, why)."""

    examples: torch.Tensor | None
    names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def list_inputs(sources: Sequence[str | Path]) -> tuple[list[str], list[str]]:
    """(paths to read, paths to report) of every source, in order, each file once: an image file, a folder
    (its images at any depth), a glob pattern (``**`` at any depth; quoted, so that mentor expands it), or
    a .parquet/.csv list with a ``path`` column."""
    paths: list[str] = []
    shown: list[str] = []
    seen: set[str] = set()
    for source in sources:
        for path, name in _one_input(str(source)):
            if path not in seen:
                seen.add(path)
                paths.append(path)
                shown.append(name)
    return paths, shown


def _one_input(source: str) -> list[tuple[str, str]]:
    path = Path(source).expanduser()
    if not path.exists() and any(c in source for c in GLOB_CHARACTERS):
        import glob

        matches = sorted(glob.glob(str(path), recursive=True))
        found = [m for p in matches for m in (_one_input(p) if Path(p).is_dir() else
                                                [(p, p)] if p.lower().endswith(IMAGE_EXTENSIONS) else [])]
        if not found:
            raise PredictError(f"{source}: no image matches this pattern ({len(matches)} path(s) matched, none an "
                               f"image: {', '.join(IMAGE_EXTENSIONS)})")
        return found
    if path.is_dir():
        files = [str(p) for p in find_images(path)]
        if not files:
            raise PredictError(f"{source}: no images found (looked for jpg, jpeg, png, bmp, gif, webp, tif, tiff "
                               "at any depth)")
        return [(f, f) for f in files]
    if not path.is_file():
        raise PredictError(f"{source} does not exist (expected an image, a folder of images, a glob pattern or a "
                           ".parquet/.csv list)")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return [(str(path), source)]
    if path.suffix.lower() not in LIST_SUFFIXES:
        raise PredictError(f"{source}: not an image ({', '.join(IMAGE_EXTENSIONS)}), a folder or a .parquet/.csv "
                           "file with a path column")
    return list(zip(*_listed(path), strict=True))


def _listed(source: Path) -> tuple[list[str], list[str]]:
    """A .parquet/.csv ``path`` column: relative paths are read from the list's folder, reported as listed."""
    import polars as pl

    try:
        table = pl.read_parquet(source) if source.suffix.lower() == ".parquet" else pl.read_csv(source)
    except Exception as exc:  # polars raises its own types for every malformed file
        raise PredictError(f"{source}: cannot read it ({type(exc).__name__}: {exc})") from None
    if "path" not in table.columns:
        raise PredictError(f"{source} has no 'path' column (columns: {', '.join(table.columns)})")
    listed = [str(p) for p in table["path"].cast(pl.Utf8).drop_nulls().to_list()]
    if not listed:
        raise PredictError(f"{source} lists no images")
    base = source.parent
    return [p if Path(p).is_absolute() else str(base / p) for p in listed], listed
