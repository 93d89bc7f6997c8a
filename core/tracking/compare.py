"""Leaderboards over an MLflow experiment, built with polars.

``runs_table`` flattens every run of an experiment into one row (ids, mentor tags, status,
timing, the latest value of every metric); ``leaderboard`` ranks stage runs (or whole
``mentor run`` parents) by a metric; ``trial_leaderboard`` ranks the trials of sweeps;
``compare`` puts several experiments side by side at any of these levels; ``render``
(render.py) turns a board into text, CSV or JSON.

Rows come from ``runs_table`` (runs_table.py).
"""

from __future__ import annotations

import difflib
from typing import Any

import polars as pl

from ..summary import split_summary, summary_name
from .render import render
from .runs_table import (
    BASE_SCHEMA,
    TAG_KIND,
    TAG_PARENT,
    experiment_id,
    ms_to_datetime,
    open_client,
    runs_table,
    search_runs,
)

__all__ = ["BASE_SCHEMA", "compare", "compression_reports", "leaderboard", "render", "runs_table", "seeds_leaderboard",
           "trial_leaderboard"]

#: Summary metrics shown next to the ranked value when a stage run logged them.
SUMMARY_COLUMNS = ("best.val.accuracy", "best.test.accuracy", "last.test.accuracy")

_BY = ("best", "last")
_LEVELS = ("stage", "experiment")
LEVELS = (*_LEVELS, "trial", "seeds")  # what compare() takes


def _metric_keys(metric: str, by: str) -> tuple[str, str | None]:
    """The summary metric to rank by and the plain metric to fall back on."""
    summary = split_summary(metric)
    if summary is not None:  # already a summary name, e.g. "best.test.accuracy" (or "best/test/accuracy")
        return summary_name(*summary), summary[1]
    return summary_name(by, metric), metric


def _present(df: pl.DataFrame, column: str | None) -> bool:
    return column is not None and column in df.columns and df[column].null_count() < df.height


def _available_metrics(table: pl.DataFrame, rows: pl.DataFrame) -> list[str]:
    return [c for c in table.columns[len(BASE_SCHEMA):] if _present(rows, c)]


def _stage_order(stages: pl.DataFrame) -> list[str]:
    ordered = stages.filter(pl.col("stage").is_not_null()).sort("start_time", nulls_last=True)
    return ordered["stage"].unique(maintain_order=True).to_list()


def _empty_stage_board(table: pl.DataFrame) -> pl.DataFrame:
    schema = {"rank": pl.UInt32(), "stage": pl.String(), "method": pl.String(),
              "model": pl.String(), "value": pl.Float64(), "status": pl.String(),
              "run_id": pl.String(), "parent_run_id": pl.String(),
              "parent_run_name": pl.String(), "parent": pl.String(),
              "start_time": BASE_SCHEMA["start_time"]}
    return pl.DataFrame(schema=schema)


def leaderboard(experiment: str, *, metric: str = "test/accuracy", by: str = "best",
                tracking_uri: str | None = None, level: str = "stage") -> pl.DataFrame:
    """Rank the runs of an experiment by ``<by>.<metric>`` (e.g. ``best.test.accuracy``).

    For a stage run lacking the summary metric, the latest value of ``<metric>`` is used.
    ``metric`` may also be a full summary name (``"last.val.accuracy"``), then ``by`` is
    ignored.

    ``level="stage"``: one row per stage run (tag ``mentor.kind=stage``), best first, with
    columns ``rank, stage, method, model, value``, the summary columns
    ``best.val.accuracy, best.test.accuracy, last.test.accuracy`` when logged, then
    ``status, run_id, parent_run_id, parent_run_name, parent`` (short id + name) and
    ``start_time``. Rows without a value come last, with a null rank.

    ``level="experiment"``: one row per parent of stage runs (a ``mentor run``, or a sweep
    trial), with ``rank, run_name, value``, one column per stage name holding that stage's
    value (stages in the order they ran), then ``kind, status, run_id, start_time``.
    ``value``, which orders the rows, is the value of the parent's last stage (the
    student, in a teacher-student pipeline).
    """
    if by not in _BY:
        raise ValueError(f"by must be one of {_BY}, got {by!r}")
    if level not in _LEVELS:
        raise ValueError(f"level must be one of {_LEVELS}, got {level!r}")
    table = runs_table(experiment, tracking_uri)
    stages = table.filter(pl.col("kind") == "stage")
    if stages.is_empty():
        if level == "stage":
            return _empty_stage_board(table)
        return pl.DataFrame(schema={"rank": pl.UInt32(), "run_name": pl.String(),
                                    "value": pl.Float64(), "kind": pl.String(),
                                    "status": pl.String(), "run_id": pl.String(),
                                    "start_time": BASE_SCHEMA["start_time"]})

    primary, fallback = _metric_keys(metric, by)
    sources = [c for c in (primary, fallback) if _present(stages, c)]
    if not sources:
        available = _available_metrics(table, stages)
        message = (f"metric {metric!r} (looked for {primary!r}"
                   + (f" and {fallback!r}" if fallback else "")
                   + f") was not logged by any stage run of experiment {experiment!r}; "
                   + "available: " + (", ".join(available) if available else "(none)"))
        close = difflib.get_close_matches(metric, available, n=1) or difflib.get_close_matches(
            primary, available, n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
        raise ValueError(message)
    stages = stages.with_columns(
        pl.coalesce([pl.col(c) for c in sources]).alias("value"))

    if level == "experiment":
        return _experiment_board(table, stages)

    parents = table.select(pl.col("run_id").alias("parent_run_id"),
                           pl.col("run_name").alias("parent_run_name"))
    board = (
        stages.join(parents, on="parent_run_id", how="left")
        .sort(["value", "start_time"], descending=[True, False], nulls_last=True)
        .with_columns(
            pl.when(pl.col("value").is_not_null())
            .then(pl.int_range(1, pl.len() + 1, dtype=pl.UInt32))
            .alias("rank"),
            pl.when(pl.col("parent_run_id").is_not_null())
            .then(pl.concat_str([pl.col("parent_run_id").str.slice(0, 8),
                                 pl.col("parent_run_name").fill_null("")], separator=" ")
                  .str.strip_chars())
            .alias("parent"),
        )
    )
    extras = [c for c in SUMMARY_COLUMNS if _present(stages, c)]
    columns = ["rank", "stage", "method", "model", "value", *extras, "status", "run_id",
               "parent_run_id", "parent_run_name", "parent", "start_time"]
    return board.select(columns)


def _experiment_board(table: pl.DataFrame, stages: pl.DataFrame) -> pl.DataFrame:
    stages = stages.filter(pl.col("parent_run_id").is_not_null())
    parents = (
        table.filter(pl.col("run_id").is_in(stages["parent_run_id"].unique().to_list()))
        .select("run_id", "run_name", "kind", "status", "start_time")
    )
    # the value of each parent's last stage (by start time) orders the board
    final = (
        stages.sort("start_time", nulls_last=True)
        .group_by("parent_run_id", maintain_order=True)
        .agg(pl.col("value").last())
        .rename({"parent_run_id": "run_id"})
    )
    order = _stage_order(stages)
    reserved = {"rank", "run_name", "value", "kind", "status", "run_id", "start_time"}
    names = {s: (f"stage:{s}" if s in reserved else s) for s in order}
    per_stage = (
        stages.filter(pl.col("stage").is_not_null())
        .group_by("parent_run_id", "stage")
        .agg(pl.col("value").max())
        .pivot(on="stage", index="parent_run_id", values="value")
        .rename({"parent_run_id": "run_id", **names}, strict=False)
    )
    stage_columns = [names[s] for s in order if names[s] in per_stage.columns]

    board = (
        parents.join(final, on="run_id", how="left")
        .join(per_stage, on="run_id", how="left")
        .sort(["value", "start_time"], descending=[True, False], nulls_last=True)
        .with_columns(
            pl.when(pl.col("value").is_not_null())
            .then(pl.int_range(1, pl.len() + 1, dtype=pl.UInt32))
            .alias("rank"))
    )
    return board.select("rank", "run_name", "value", *stage_columns, "kind", "status",
                        "run_id", "start_time")


# --------------------------------------------------------------------------- multi-seed runs


def seeds_leaderboard(experiment: str, *, metric: str = "test/accuracy", by: str = "best",
                      tracking_uri: str | None = None) -> pl.DataFrame:
    """One row per multi-seed run (``mentor run --seeds``) and stage: the metric's mean, sample std,
    count, min and max over the seeds' runs, best mean first. Columns ``rank, stage, mean, std, n,
    min, max, seeds, status, run_id, start_time`` (run_id and status: the multi-seed parent's)."""
    table = runs_table(experiment, tracking_uri)
    primary, fallback = _metric_keys(metric, by)
    schema = {"rank": pl.UInt32(), "stage": pl.String(), "mean": pl.Float64(), "std": pl.Float64(),
              "n": pl.UInt32(), "min": pl.Float64(), "max": pl.Float64(), "seeds": pl.String(),
              "status": pl.String(), "run_id": pl.String(), "start_time": BASE_SCHEMA["start_time"]}
    groups = table.filter(pl.col("kind") == "seeds")
    sources = [c for c in (primary, fallback) if _present(table, c)]
    if groups.is_empty() or not sources:
        if not groups.is_empty():
            raise ValueError(f"metric {metric!r} was not logged by any stage of experiment {experiment!r}")
        return pl.DataFrame(schema=schema)
    members = table.filter(pl.col("kind") == "experiment").select(
        pl.col("run_id").alias("member"), pl.col("parent_run_id").alias("group"))
    stages = (table.filter(pl.col("kind") == "stage")
              .with_columns(pl.coalesce([pl.col(c) for c in sources]).alias("value"))
              .join(members, left_on="parent_run_id", right_on="member")
              .filter(pl.col("group").is_in(groups["run_id"].to_list()) & pl.col("value").is_not_null()))
    board = (stages.group_by("group", "stage").agg(
        mean=pl.col("value").mean(), std=pl.col("value").std(ddof=1).fill_null(0.0), n=pl.len(),
        min=pl.col("value").min(), max=pl.col("value").max())
        .join(groups.select(pl.col("run_id").alias("group"), pl.col("run_name").alias("seeds"), "status",
                            "start_time"), on="group")
        .rename({"group": "run_id"})
        .sort(["mean", "start_time"], descending=[True, False])
        .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.UInt32).alias("rank"),
                      pl.col("n").cast(pl.UInt32)))
    return board.select(list(schema))


# --------------------------------------------------------------------------- sweep trials


def _typed(values: list[str | None]) -> pl.Series:
    """MLflow params are text: give a column of numbers its number type."""
    column = pl.Series(values, dtype=pl.String())
    present = column.null_count()
    for dtype in (pl.Int64(), pl.Float64()):
        cast = column.cast(dtype, strict=False)
        if cast.null_count() == present:
            return cast
    return column


def trial_leaderboard(experiment: str, *, study: str | None = None,
                      tracking_uri: str | None = None) -> pl.DataFrame:
    """The trials of the sweeps in an experiment (runs tagged ``mentor.kind=trial``), ranked.

    One row per trial, columns ``rank, study, trial, value, state``, one column per searched
    path (the sampled values, numbers typed as numbers), then ``status, duration_s, run_id,
    sweep_run_id, start_time``. ``value`` is the trial's objective; ranks run within each
    study, best first in the study's direction (its sweep run's ``mentor.direction`` tag);
    trials without a value (pruned, failed, running) come last, unranked. ``study`` keeps
    one study's trials.
    """
    client, uri = open_client(tracking_uri)
    runs = search_runs(client, experiment_id(client, experiment, uri))
    sweeps = {r.data.tags.get("mentor.study"): r for r in runs if r.data.tags.get(TAG_KIND) == "sweep"}
    trials = [r for r in runs if r.data.tags.get(TAG_KIND) == "trial"
              and (study is None or r.data.tags.get("mentor.study") == study)]
    if study is not None and study not in sweeps:
        known = sorted(k for k in sweeps if k)
        message = f"no sweep with study {study!r} in experiment {experiment!r}; studies: "
        message += ", ".join(repr(k) for k in known) if known else "(none)"
        close = difflib.get_close_matches(study, known, n=1)
        raise ValueError(message + (f"; did you mean {close[0]!r}?" if close else ""))
    names = sorted({key for r in trials for key in r.data.params})
    columns: dict[str, Any] = {
        "study": pl.Series([r.data.tags.get("mentor.study") for r in trials], dtype=pl.String()),
        "trial": pl.Series([int(r.data.tags.get("mentor.trial", -1)) for r in trials], dtype=pl.Int64()),
        "value": pl.Series([r.data.metrics.get("value") for r in trials], dtype=pl.Float64()),
        "state": pl.Series([r.data.tags.get("mentor.state") for r in trials], dtype=pl.String()),
    }
    reserved = set(columns) | {"rank", "status", "duration_s", "run_id", "sweep_run_id", "start_time"}
    params = {(f"params.{n}" if n in reserved else n): _typed([r.data.params.get(n) for r in trials])
              for n in names}
    columns.update(params)
    columns.update({
        "status": pl.Series([r.info.status for r in trials], dtype=pl.String()),
        "duration_s": pl.Series([(r.info.end_time - r.info.start_time) / 1000.0
                                 if r.info.start_time is not None and r.info.end_time else None
                                 for r in trials], dtype=pl.Float64()),
        "run_id": pl.Series([r.info.run_id for r in trials], dtype=pl.String()),
        "sweep_run_id": pl.Series([r.data.tags.get(TAG_PARENT) for r in trials], dtype=pl.String()),
        "start_time": pl.Series([ms_to_datetime(r.info.start_time) for r in trials],
                                dtype=BASE_SCHEMA["start_time"]),
    })
    df = pl.DataFrame(columns)
    # order: studies as they started, then best first in each study's direction
    order = {name: i for i, name in enumerate(
        sorted(sweeps, key=lambda k: (sweeps[k].info.start_time or 0, str(k))))}
    minimize = {name for name, run in sweeps.items() if run.data.tags.get("mentor.direction") == "minimize"}
    df = df.with_columns(
        pl.col("study").replace_strict(order, default=len(order), return_dtype=pl.Int64).alias("_study"),
        pl.when(pl.col("study").is_in(list(minimize))).then(pl.col("value"))
        .otherwise(-pl.col("value")).alias("_key"),
    ).sort(["_study", "_key", "trial"], nulls_last=True)
    df = df.with_columns(
        pl.when(pl.col("value").is_not_null())
        .then(pl.int_range(1, pl.len() + 1, dtype=pl.UInt32).over("_study"))
        .alias("rank"))
    return df.select("rank", *[c for c in df.columns if c not in ("rank", "_study", "_key")])


# --------------------------------------------------------------------------- several experiments

#: Columns that close a board; kept last when boards with different middles are stacked.
_TAIL = ("kind", "state", "status", "duration_s", "run_id", "parent_run_id", "parent_run_name", "parent",
         "sweep_run_id", "start_time")


def compare(experiments: str | list[str], *, level: str = "stage", metric: str = "test/accuracy",
            by: str = "best", study: str | None = None, tracking_uri: str | None = None) -> pl.DataFrame:
    """A leaderboard at ``level`` (stage, experiment or trial) over one or several experiments.

    One experiment: exactly :func:`leaderboard` or :func:`trial_leaderboard`. Several: their
    boards stacked with an ``experiment`` column after ``rank``; stage and experiment boards
    are ranked anew across all of them (highest value first), trial boards keep their
    per-study ranks.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    names = [experiments] if isinstance(experiments, str) else list(experiments)
    boards = []
    for name in names:
        if level == "trial":
            board = trial_leaderboard(name, study=study, tracking_uri=tracking_uri)
        elif level == "seeds":
            board = seeds_leaderboard(name, metric=metric, by=by, tracking_uri=tracking_uri)
        else:
            board = leaderboard(name, metric=metric, by=by, tracking_uri=tracking_uri, level=level)
        boards.append(board)
    if len(boards) == 1:
        return boards[0]
    stacked = pl.concat([b.with_columns(pl.lit(n, dtype=pl.String()).alias("experiment"))
                         for n, b in zip(names, boards, strict=True)], how="diagonal_relaxed")
    if level == "seeds":
        stacked = stacked.sort(["mean", "start_time"], descending=[True, False]).with_columns(
            pl.int_range(1, pl.len() + 1, dtype=pl.UInt32).alias("rank"))
    elif level != "trial":
        stacked = stacked.sort(["value", "start_time"], descending=[True, False], nulls_last=True).with_columns(
            pl.when(pl.col("value").is_not_null())
            .then(pl.int_range(1, pl.len() + 1, dtype=pl.UInt32))
            .alias("rank"))
    middle = [c for c in stacked.columns if c not in ("rank", "experiment") and c not in _TAIL]
    tail = [c for c in _TAIL if c in stacked.columns]
    return stacked.select("rank", "experiment", *middle, *tail)




def compression_reports(experiments: str | list[str], *, tracking_uri: str | None = None) \
        -> list[tuple[str, pl.DataFrame]]:
    """The compression report (``report/compression.csv``) of each experiment's latest run that logged one,
    with a heading naming the run and the machine it was measured on."""
    import tempfile
    from pathlib import Path

    names = [experiments] if isinstance(experiments, str) else list(experiments)
    client, uri = open_client(tracking_uri)
    out = []
    for name in names:
        exp_id = experiment_id(client, name, uri)
        runs = client.search_runs([exp_id], filter_string=f"tags.`{TAG_KIND}` = 'experiment' and "
                                  "tags.`mentor.report.machine` != ''", order_by=["attributes.start_time DESC"],
                                  max_results=1)
        if not runs:
            raise ValueError(f"no run of experiment '{name}' has a compression report: add `report: {{}}` to "
                             "its file and run it (or `mentor export` a stage, then run again)")
        run = runs[0]
        from .models import no_download_bar

        with tempfile.TemporaryDirectory() as tmp, no_download_bar():  # one small file: no progress bar
            table = pl.read_csv(Path(client.download_artifacts(run.info.run_id, "report/compression.csv", tmp)))
        heading = (f"{name}: run {run.info.run_name} ({run.info.run_id[:8]}), measured on "
                   f"{run.data.tags.get('mentor.report.machine')}")
        out.append((heading, table))
    return out
