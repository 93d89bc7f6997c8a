"""A labeled table as a data source: numeric feature columns and a label column, from CSV or parquet."""

from pathlib import Path

import polars as pl
import torch
from pydantic import Field

import mentor
from mentor import FilePath, Params, hookimpl


class TableParams(Params):
    path: FilePath = Field(description="a .csv or .parquet file: one row per example")
    label: str = Field(default="label", description="the column that holds each row's class")
    features: list[str] | None = Field(default=None, description="the feature columns (default: every "
                                       "numeric column but the label)")
    test_fraction: float = Field(default=0.2, gt=0, lt=1, description="rows held out as the test set")
    seed: int = Field(default=0, description="seed of the train/test split")


def table(path: str, label: str = "label", features: list[str] | None = None, test_fraction: float = 0.2,
          seed: int = 0) -> mentor.DataBundle:
    path = Path(path)
    if not path.is_file():
        raise mentor.DataNotFound(f"no table at {path}")
    frame = pl.read_parquet(path) if path.suffix.lower() == ".parquet" else pl.read_csv(path)
    if label not in frame.columns:
        raise mentor.DataNotFound(f"{path} has no column {label!r} (columns: {', '.join(frame.columns)})")
    features = features or [c for c, t in frame.schema.items() if c != label and t.is_numeric()]
    frame = frame.drop_nulls([label, *features])
    classes = sorted(str(c) for c in frame[label].unique().to_list())
    x = torch.from_numpy(frame.select(features).to_numpy().astype("float32"))
    y = torch.tensor([classes.index(str(c)) for c in frame[label].to_list()])
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    info = mentor.DataInfo(
        num_classes=len(classes), in_channels=len(features), image_size=(),
        mean=tuple(x[train].mean(0).tolist()), std=tuple(x[train].std(0).clamp_min(1e-6).tolist()),
        class_names=tuple(classes), modality="tabular", details={"features": features},
    )
    return mentor.DataBundle(train=mentor.ExampleSet(x[train], y[train]), test=mentor.ExampleSet(x[test], y[test]),
                             info=info)


@hookimpl
def register_data_sources(register):
    register("table", table, params=TableParams, description="labeled feature vectors from a .csv/.parquet table")
