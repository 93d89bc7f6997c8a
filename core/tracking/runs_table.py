"""Every run of an MLflow experiment as one polars row: ids, mentor tags, status, timing and the
latest value of every metric (``runs_table``), read through ``MlflowClient.search_runs`` with
pagination; pandas is never involved. The leaderboards (compare.py) are built on it."""

from __future__ import annotations

import datetime as dt
import difflib
from typing import Any

import mlflow
import polars as pl
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

#: Tag names mentor writes on its runs.
TAG_KIND = "mentor.kind"
TAG_STAGE = "mentor.stage"
TAG_METHOD = "mentor.method"
TAG_MODEL = "mentor.model"
TAG_PARENT = "mlflow.parentRunId"

#: The fixed leading columns of :func:`runs_table`, with their polars types.
BASE_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "parent_run_id": pl.String(),
    "run_name": pl.String(),
    "kind": pl.String(),
    "stage": pl.String(),
    "method": pl.String(),
    "model": pl.String(),
    "status": pl.String(),
    "start_time": pl.Datetime("us", "UTC"),
    "duration_s": pl.Float64(),
}


_PAGE_SIZE = 1000


# --------------------------------------------------------------------------- MLflow access


def open_client(tracking_uri: str | None) -> tuple[MlflowClient, str]:
    uri = tracking_uri or mlflow.get_tracking_uri()
    return MlflowClient(tracking_uri=uri), uri


def _experiment_names(client: MlflowClient) -> list[str]:
    names: list[str] = []
    token: str | None = None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=_PAGE_SIZE,
                                         page_token=token)
        names.extend(e.name for e in page)
        token = page.token
        if not token:
            return names


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None and exp.lifecycle_stage != "deleted":
        return exp.experiment_id
    known = sorted(_experiment_names(client))
    message = f"no MLflow experiment named {name!r} in {uri}; known: "
    message += ", ".join(repr(k) for k in known) if known else "(none)"
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    raise ValueError(message)


def search_runs(client: MlflowClient, exp_id: str) -> list[Run]:
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs([exp_id], run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=_PAGE_SIZE, order_by=["attributes.start_time ASC"],
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def ms_to_datetime(ms: int | None) -> dt.datetime | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000.0, tz=dt.UTC)


def _metric_column(name: str) -> str:
    # a metric may not shadow a fixed column
    return f"metrics.{name}" if name in BASE_SCHEMA else name


# --------------------------------------------------------------------------- runs_table


def runs_table(experiment: str, tracking_uri: str | None = None) -> pl.DataFrame:
    """Every (non-deleted) run of an MLflow experiment, one row each, oldest first.

    Columns: ``run_id, parent_run_id, run_name, kind, stage, method, model, status,
    start_time`` (UTC datetime), ``duration_s`` (None while running), then one Float64
    column per metric name (sorted), holding the run's latest value of that metric.
    Raises ValueError (with a did-you-mean) for an unknown experiment.
    """
    client, uri = open_client(tracking_uri)
    runs = search_runs(client, experiment_id(client, experiment, uri))

    metric_names = sorted({key for run in runs for key in run.data.metrics})
    rows: list[dict[str, Any]] = []
    for run in runs:
        info, tags = run.info, run.data.tags
        start, end = info.start_time, info.end_time
        row: dict[str, Any] = {
            "run_id": info.run_id,
            "parent_run_id": tags.get(TAG_PARENT),
            "run_name": info.run_name,
            "kind": tags.get(TAG_KIND),
            "stage": tags.get(TAG_STAGE),
            "method": tags.get(TAG_METHOD),
            "model": tags.get(TAG_MODEL),
            "status": info.status,
            "start_time": ms_to_datetime(start),
            "duration_s": (end - start) / 1000.0 if start is not None and end else None,
        }
        for name in metric_names:
            value = run.data.metrics.get(name)
            row[_metric_column(name)] = None if value is None else float(value)
        rows.append(row)

    schema = dict(BASE_SCHEMA)
    schema.update({_metric_column(name): pl.Float64() for name in metric_names})
    return pl.DataFrame(rows, schema=schema)


# --------------------------------------------------------------------------- leaderboard


