"""The two tables of pseudo-labelling, as a contract between scorers and selection strategies.

**Scores** (long format, one row per image and rank): ``index`` Int64 (the
image's id: its row in the source's train set, or in an unlabeled pool),
``rank`` Int8 (0 for the image's most probable class, up to P-1), ``class``
Int32, ``prob`` Float32 (the teacher's softmax probability of that class).
An image's confidence is its rank-0 ``prob``; rows need not be in any order.

**Selection** (one row per training example; an image may appear several
times): ``index`` Int64, ``label`` Int32 (the class trained on), ``prob``
Float32 (the teacher's probability of that label), ``rank`` Int8 (the label's
rank in the image's top-P), in that column order.

A selection strategy takes scores (a ``polars.DataFrame`` or ``LazyFrame``)
and returns a selection; ``scores_frame`` and ``check_selection`` hold both
ends to the contract.
"""

from __future__ import annotations

import polars as pl

SCORES_SCHEMA: dict[str, pl.DataType] = {
    "index": pl.Int64(), "rank": pl.Int8(), "class": pl.Int32(), "prob": pl.Float32(),
}
SELECTION_SCHEMA: dict[str, pl.DataType] = {
    "index": pl.Int64(), "label": pl.Int32(), "prob": pl.Float32(), "rank": pl.Int8(),
}


class TableError(ValueError):
    """A scores or selection table lacks a column of the contract."""


def _missing(names: list[str], schema: dict[str, pl.DataType], what: str) -> None:
    missing = [c for c in schema if c not in names]
    if missing:
        raise TableError(f"{what} table lacks column(s) {missing}; expected {list(schema)} (has {names})")


def scores_frame(scores: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """The scores table as a lazy frame with exactly the contract's columns and dtypes."""
    _missing(scores.collect_schema().names(), SCORES_SCHEMA, "scores")
    return scores.lazy().select(pl.col(c).cast(t) for c, t in SCORES_SCHEMA.items())


def check_selection(selection: pl.DataFrame) -> pl.DataFrame:
    """A strategy's output with the contract's columns, order and dtypes (TableError if it lacks one)."""
    if not isinstance(selection, pl.DataFrame):
        raise TableError(f"a selection strategy must return a polars DataFrame, got {type(selection).__name__}")
    _missing(selection.columns, SELECTION_SCHEMA, "selection")
    return selection.select(pl.col(c).cast(t) for c, t in SELECTION_SCHEMA.items())


def empty_scores() -> pl.DataFrame:
    return pl.DataFrame(schema=SCORES_SCHEMA)
