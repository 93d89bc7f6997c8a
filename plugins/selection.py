"""Built-in pseudo-label selection strategies: which teacher-scored images a student trains on.

Every strategy takes the **scores** table and returns the **selection** table.

The tables are the public contract of ``mentor`` (``mentor.SCORES_SCHEMA``,
``mentor.SELECTION_SCHEMA``; see core/tables.py).

The output is always sorted by (``label``, ``prob`` descending, ``index``
ascending), and every cut-off breaks ties in ``prob`` by the smaller ``index``,
so the selection does not depend on the order of the input rows.

All strategies are polars plans over the whole table (no Python loop over rows
or classes); ``top_k_per_class`` sorts only the rows that can make a class's
top k, which keeps it well under a second on 10M scored rows.
"""

from __future__ import annotations

import polars as pl
from pydantic import Field

from mentor import SELECTION_SCHEMA, NoParams, Params, hookimpl, scores_frame

# The one output order: by label, most confident first, smaller index on ties.
_ORDER = ["label", "prob", "index"]
_DESCENDING = [False, True, False]


def _selection(lf: pl.LazyFrame, *, sort: bool = True) -> pl.DataFrame:
    """Rename ``class`` to ``label``, order the columns, sort (unless already sorted), collect."""
    lf = lf.rename({"class": "label"}).select(list(SELECTION_SCHEMA))
    if sort:
        lf = lf.sort(_ORDER, descending=_DESCENDING)
    return lf.collect()


# --- top_k_per_class ----------------------------------------------------------


class TopKPerClassParams(Params):
    k: int = Field(ge=1, description="examples kept per class")
    p: int | None = Field(default=None, ge=1,
                          description="consider only each image's top-p classes (ranks < p); null: all ranks")


class TopKPerClass:
    """Yalniz et al. 2019: per class, the k images that score it highest among those whose top-p has it.

    An image can be selected for several classes (one row each). Within a class,
    ties in ``prob`` go to the smaller ``index``. A class that fewer than k
    images have in their top-p keeps all of them.
    """

    def __init__(self, k: int, p: int | None = None):
        self.k, self.p = k, p

    def __repr__(self) -> str:
        return f"TopKPerClass(k={self.k}, p={self.p})"

    def __call__(self, scores: pl.DataFrame) -> pl.DataFrame:
        lf = scores_frame(scores)
        if self.p is not None:
            lf = lf.filter(pl.col("rank") < self.p)
        # The k-th largest prob of each class is a lower bound on what that
        # class keeps: filter to it first (a selection, not a sort), so the sort
        # runs on about k rows per class rather than on the whole table. Ties at
        # the bound may leave more than k rows; the sort and head cut them by index.
        kth = pl.col("prob").top_k(self.k).min().over("class")
        lf = (
            lf.filter(pl.col("prob") >= kth)
            .sort(["class", "prob", "index"], descending=_DESCENDING)
            .group_by("class", maintain_order=True)
            .head(self.k)
        )
        return _selection(lf, sort=False)  # head keeps the (class, prob desc, index) order


# --- threshold ----------------------------------------------------------------


class ThresholdParams(Params):
    tau: float = Field(ge=0, le=1, description="minimum teacher probability (kept when equal)")
    top_only: bool = Field(default=True, description="only the image's rank-0 class; false: any class with prob >= tau")


class Threshold:
    """Keep images whose confidence is at least tau, labelled with their top class.

    With ``top_only=False`` every (image, class) row with ``prob >= tau`` is kept,
    so with tau below 0.5 an image can be selected for several classes.
    """

    def __init__(self, tau: float, top_only: bool = True):
        self.tau, self.top_only = tau, top_only

    def __repr__(self) -> str:
        return f"Threshold(tau={self.tau}, top_only={self.top_only})"

    def __call__(self, scores: pl.DataFrame) -> pl.DataFrame:
        lf = scores_frame(scores)
        if self.top_only:
            lf = lf.filter(pl.col("rank") == 0)
        # Compare in float32, the table's own precision, so prob == tau is kept.
        return _selection(lf.filter(pl.col("prob") >= pl.lit(self.tau, dtype=pl.Float32)))


# --- balanced -----------------------------------------------------------------


class BalancedParams(Params):
    per_class: int = Field(ge=1, description="examples per class after balancing")
    min_confidence: float = Field(default=0.0, ge=0, le=1,
                                  description="drop images whose confidence is below this first")


class Balanced:
    """Noisy Student (Xie et al. 2020): hard labels, exactly per_class examples for each class present.

    Uses rank-0 rows only and drops those with confidence < ``min_confidence``.
    A class with more than ``per_class`` images keeps its ``per_class`` most
    confident (ties: smaller index). A class with n < ``per_class`` images is
    filled by repeating its rows, sorted by (prob desc, index asc), cyclically:
    example j of the class is row j % n, so the first ``per_class % n`` rows
    appear once more than the rest. The copies of a row are adjacent in the
    output, which keeps the common (label, prob desc, index) order. A class no
    image has as its top class (after the confidence filter) stays absent: there
    is nothing to duplicate, and inventing examples for it would be wrong.
    """

    def __init__(self, per_class: int, min_confidence: float = 0.0):
        self.per_class, self.min_confidence = per_class, min_confidence

    def __repr__(self) -> str:
        return f"Balanced(per_class={self.per_class}, min_confidence={self.min_confidence})"

    def __call__(self, scores: pl.DataFrame) -> pl.DataFrame:
        m = self.per_class
        min_conf = pl.lit(self.min_confidence, dtype=pl.Float32)
        pos = pl.col("_pos")
        n = pl.col("_n")
        lf = (
            scores_frame(scores)
            .filter(pl.col("rank") == 0, pl.col("prob") >= min_conf)
            .sort(["class", "prob", "index"], descending=_DESCENDING)
            .with_columns(
                pl.int_range(pl.len(), dtype=pl.Int64).over("class").alias("_pos"),
                pl.len().over("class").cast(pl.Int64).alias("_n"),
            )
            .filter(pos < m)
            # Example j of the class is row j % n: row pos serves j = pos, pos + n, ...
            # below m, i.e. ceil((m - pos) / n) times (once when the class is full).
            .with_columns(pl.int_ranges(0, (m - pos + n - 1) // n).alias("_copy"))
            .explode("_copy")
        )
        return _selection(lf, sort=False)  # sorted before, explode keeps order


# --- all ----------------------------------------------------------------------


class All:
    """Every image once, labelled with its top class (no selection)."""

    def __repr__(self) -> str:
        return "All()"

    def __call__(self, scores: pl.DataFrame) -> pl.DataFrame:
        return _selection(scores_frame(scores).filter(pl.col("rank") == 0))


@hookimpl
def register_selection_strategies(register):
    register("top_k_per_class", TopKPerClass, params=TopKPerClassParams,
             description="Yalniz et al. 2019: per class, the k highest-scoring images among those with it in top-p")
    register("threshold", Threshold, params=ThresholdParams,
             description="images whose confidence (rank-0 prob) is at least tau, with their top class")
    register("balanced", Balanced, params=BalancedParams,
             description="Noisy Student: hard labels, per_class per class (most confident kept, few duplicated)")
    register("all", All, params=NoParams,
             description="every image with its top class")
