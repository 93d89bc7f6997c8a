"""The ``label`` stage kind: a teacher scores the unlabeled images into a pseudo-label table, nothing trains.

Why: in Yalniz et al.'s pipeline, scoring a large pool is a step of its own,
the costly one, run once and then used by many students and selections. The
stage writes the teacher's top-P table (to the shared cache when the
unlabeled data is a pool, see ``StageContext.score_pool``), logs it, its
label-free diagnostics (top-1 class histogram, confidence distribution) and,
when ``selection`` is given, the selected rows. A later ``pseudo_label``
stage, run or sweep trial with the same teacher and pool reuses the table.
"""

from __future__ import annotations

import polars as pl
from pydantic import Field

from mentor import (
    SELECTION_SCHEMA,
    SelectionSpec,
    StageConfig,
    StageContext,
    StageResult,
    TeacherRef,
    hookimpl,
    pool_diagnostics,
)

from .pseudo_label import readable


class LabelStage(StageConfig):
    """Scores every unlabeled image with the teacher; optionally applies a selection strategy."""

    teacher: TeacherRef = Field(description="who labels: an earlier stage (its trained model) or a `models` key "
                                "with weights")
    top_p: int = Field(default=10, ge=1, description="classes kept per scored image (the table: N x top_p rows)")
    selection: SelectionSpec | None = Field(default=None, description="also write the rows this strategy selects")
    score_batch_size: int = Field(default=1024, ge=1, description="images per scoring batch")
    score_chunk_size: int = Field(default=50_000, ge=1, description="images per parquet chunk of a new table "
                                  "(the unit of resuming; under torchrun, of sharding)")
    log_table: bool = Field(default=True, description="log the table's parquet chunks on the stage's run "
                            "(off for pools too large to copy into the artifact store)")


def run_label(stage: LabelStage, ctx: StageContext) -> StageResult:
    teacher = ctx.teacher(stage.teacher).to(ctx.device)
    pool = ctx.unlabeled_pool()
    if pool is not None:
        table = ctx.score_pool(teacher, pool, top_p=stage.top_p, batch_size=stage.score_batch_size,
                               name="scores", teacher=stage.teacher, log_table=stage.log_table,
                               chunk_size=stage.score_chunk_size)
        scores = table.scan()
    else:
        if len(ctx.splits.unlabeled) == 0:
            raise ctx.config_error(("stages", ctx.index), f"stage '{stage.name}': there is nothing to label: set "
                                   "data.unlabeled (a folder of images) or data.labeled_per_class")
        frame = ctx.score(teacher, ctx.splits.unlabeled, top_p=stage.top_p, batch_size=stage.score_batch_size)
        if stage.log_table:
            ctx.log_table(frame, "scores/scores.parquet")
        scores = frame.lazy()
    selection = ctx.build_selection(stage.selection)(scores) if stage.selection else \
        pl.DataFrame(schema=SELECTION_SCHEMA)
    metrics, per_class = pool_diagnostics(scores, selection, ctx.info.num_classes, class_names=ctx.info.class_names)
    if stage.selection is None:
        metrics = {k: v for k, v in metrics.items() if not k.startswith("pseudo/")}
    else:
        scored = len(pool) if pool is not None else len(ctx.splits.unlabeled)
        ctx.say(f"selected {len(selection):,} rows of {scored:,} scored {ctx.info.noun}")
        ctx.log_table(readable(ctx, selection, pool), "pseudo_labels/selected.parquet")
    ctx.log_metrics(metrics, step=0)
    ctx.log_table(per_class, "pseudo_labels/per_class.csv")
    ctx.log_figure(ctx.confidence_histogram(scores, selection["prob"].to_numpy()), "pseudo_labels/confidence.png")
    return StageResult(stage.name, stage.kind, metrics=metrics)


@hookimpl
def register_methods(register):
    register("label", run_label, params=LabelStage,
             description="a teacher scores the unlabeled images into a pseudo-label table (top-P per image, "
             "reused by later stages, runs and trials); no training")
