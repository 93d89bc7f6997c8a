"""Built-in unlabeled sources: a folder of images, or a table listing image paths."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from pydantic import Field

from mentor import DataNotFound, FilePath, ImagePool, Params, find_images, hookimpl


class FolderParams(Params):
    path: FilePath = Field(description="a folder of images, searched at any depth (relative: from the experiment "
                           "file's folder)")


class PathListParams(Params):
    path: FilePath = Field(description="a .parquet or .csv file listing images (relative: from the experiment "
                           "file's folder)")
    column: str = Field(default="path", description="the column of image paths; relative ones are read "
                        "from the file's folder")


def image_folder(path: str) -> ImagePool:
    """Every image file under a folder, at any depth, in sorted order."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataNotFound(f"unlabeled image folder {folder} does not exist")
    files = find_images(folder)
    if not files:
        raise DataNotFound(f"unlabeled image folder {folder} holds no images (looked for "
                           "jpg, jpeg, png, bmp, gif, webp, tif, tiff at any depth)")
    return ImagePool(files)


def path_list(path: str, column: str) -> ImagePool:
    """The images a .parquet or .csv table lists, in the table's order."""
    table_file = Path(path).expanduser()
    if not table_file.is_file():
        raise DataNotFound(f"unlabeled path list {table_file} does not exist")
    reader = pl.read_parquet if table_file.suffix.lower() == ".parquet" else pl.read_csv
    table = reader(table_file)
    if column not in table.columns:
        raise DataNotFound(f"unlabeled path list {table_file} has no column '{column}' (columns: "
                           f"{', '.join(table.columns)})")
    base = table_file.parent
    files = [p if Path(p).is_absolute() else str(base / p) for p in table[column].cast(pl.Utf8).to_list()]
    if not files:
        raise DataNotFound(f"unlabeled path list {table_file} lists no images")
    return ImagePool(files)


@hookimpl
def register_unlabeled_sources(register):
    register("image_folder", image_folder, params=FolderParams,
             description="every image file under a folder, any depth, sorted")
    register("path_list", path_list, params=PathListParams,
             description="images listed in a .parquet/.csv column (relative to the file's folder)")
