"""A selection strategy: keep the images whose teacher distribution has low entropy."""

import polars as pl
from pydantic import Field

import mentor
from mentor import Params, hookimpl


class LowEntropyParams(Params):
    max_entropy: float = Field(ge=0, description="the largest entropy kept, in nats, over the top-P classes")


def low_entropy(max_entropy: float):
    def select(scores: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
        scores = mentor.scores_frame(scores)  # the contract's columns and dtypes, lazily
        per_image = scores.group_by("index").agg(
            entropy=-(pl.col("prob") * pl.col("prob").clip(1e-12).log()).sum(),
            label=pl.col("class").sort_by("rank").first(),
            prob=pl.col("prob").sort_by("rank").first(),
        )
        kept = (per_image.filter(pl.col("entropy") <= max_entropy)
                .with_columns(rank=pl.lit(0)).sort("index").collect())
        return mentor.check_selection(kept)  # index, label, prob, rank

    return select


@hookimpl
def register_selection_strategies(register):
    register("low_entropy", low_entropy, params=LowEntropyParams,
             description="the teacher's top-1 class for images whose top-P entropy is at most max_entropy")
