"""Pseudo-labelling: a teacher labels the unlabeled split, a student learns from it.

Two published pipelines, one stage kind:
- Yalniz et al. 2019 (``mode: pretrain``): the student pre-trains on the
  selected pseudo-labeled set, then fine-tunes on the labeled data (``finetune``).
- Noisy Student, Xie et al. 2020 (``mode: joint``): the student trains on
  labeled and pseudo-labeled images together, with noise (``augment.randaugment``,
  the model's dropout); ``rounds: N`` makes each round's student the next teacher.
Each round is a nested MLflow run with its pseudo-label diagnostics.
"""

from __future__ import annotations

from typing import Literal

import polars as pl
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from mentor import (
    ImageSet,
    ModelKey,
    PoolImages,
    SelectionSpec,
    StageContext,
    StageName,
    StageResult,
    TeacherRef,
    TrainingConfig,
    TrainingStageConfig,
    TrainTask,
    hookimpl,
    pool_diagnostics,
    soft_targets,
)


class PseudoLabelStage(TrainingStageConfig):
    """Teacher scores the unlabeled split; a selection strategy picks rows; a student learns.

    The stage's own training fields (epochs, optimizer, ...) drive the student's
    pre-training (pretrain) or joint training (joint); ``finetune`` adds a
    phase on the labeled data only.
    """

    teacher: TeacherRef = Field(description="who labels the unlabeled split: an earlier stage (its trained "
                                "model) or a `models` key with weights")
    student: ModelKey = Field(description="a key of `models`: the student's architecture")
    init: StageName | None = Field(default=None, description="start the student from this stage's weights")
    top_p: int = Field(default=10, ge=1, description="classes kept per scored image (memory: N x top_p)")
    selection: SelectionSpec = Field(description="a selection strategy (see `mentor plugins`)")
    labels: Literal["hard", "soft"] = Field(
        default="hard", description="hard: the selected class; soft: the teacher's top-P distribution")
    mode: Literal["pretrain", "joint"] = Field(
        default="pretrain", description="pretrain: pseudo-labels only; joint: labeled + pseudo-labeled batches")
    unlabeled_ratio: float = Field(
        default=1.0, gt=0, description="joint: pseudo-labeled images per labeled image in a batch (in expectation)")
    finetune: TrainingConfig | None = Field(default=None, description="then train on the labeled data only")
    rounds: int = Field(default=1, ge=1, description="Noisy Student: each round's student teaches the next")
    score_batch_size: int = Field(default=1024, ge=1)
    score_chunk_size: int = Field(default=50_000, ge=1, description="a pool: images per parquet chunk of a new "
                                  "scores table (the unit of resuming; under torchrun, of sharding)")

    @model_validator(mode="after")
    def _ratio_only_for_joint(self):
        if self.mode == "pretrain" and self.unlabeled_ratio != 1.0:
            raise ValueError("unlabeled_ratio applies to mode: joint only")
        return self


def _rows_of(unlabeled_index: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """Rows of the unlabeled set holding the source indices ``wanted``."""
    lookup = torch.full((int(unlabeled_index.max()) + 1,), -1, dtype=torch.long)
    lookup[unlabeled_index] = torch.arange(len(unlabeled_index))
    return lookup[wanted]


def pseudo_labeled_set(ctx: StageContext, scores: pl.DataFrame, selection: pl.DataFrame, labels: str):
    """The selected rows as training images with target distributions [M, C]."""
    unlabeled = ctx.splits.unlabeled
    index = torch.from_numpy(selection["index"].to_numpy()).long()
    images = unlabeled.images[_rows_of(unlabeled.index, index)]
    if labels == "soft":
        targets = soft_targets(scores, index, ctx.info.num_classes)
    else:
        targets = F.one_hot(torch.from_numpy(selection["label"].to_numpy()).long(), ctx.info.num_classes).float()
    return images, index, targets


def training_set(ctx: StageContext, stage: PseudoLabelStage, images, index, targets):
    """An ImageSet whose labels are row numbers into ``targets`` (hard or soft alike).

    In joint mode the labeled rows are repeated so that, in expectation, a batch
    holds ``unlabeled_ratio`` pseudo-labeled images per labeled one. Images read
    from a pool's files (``PoolImages``) stay unread: the labeled rows are
    appended to them by row number, not copied.
    """
    if stage.mode == "joint":
        labeled = ctx.training_data()
        repeats = max(1, round(len(images) / (stage.unlabeled_ratio * max(len(labeled), 1))))
        lab_targets = F.one_hot(labeled.labels, ctx.info.num_classes).float().repeat(repeats, 1)
        if isinstance(images, PoolImages):
            images = images.with_memory(labeled.images, torch.arange(len(labeled)).repeat(repeats))
        else:
            images = torch.cat([images, labeled.images.repeat(repeats, 1, 1, 1)])
        targets = torch.cat([targets, lab_targets])
        index = torch.cat([index, labeled.index.repeat(repeats)])
    data = ImageSet(images, torch.arange(len(images)), index)
    return data, targets


def benchmark_round(ctx: StageContext, stage: PseudoLabelStage, teacher, select, round_number: int):
    """Score the labeled source's remainder in memory; diagnostics against its hidden labels."""
    scores = ctx.score(teacher, ctx.splits.unlabeled, top_p=stage.top_p, batch_size=stage.score_batch_size)
    selection = select(scores)
    if len(selection) == 0:
        raise ValueError(f"stage '{stage.name}', round {round_number}: the selection is empty")
    ctx.say(f"round {round_number}: selected {len(selection):,} rows of {len(ctx.splits.unlabeled):,} "
            f"scored {ctx.info.noun}")
    log_round(ctx, scores, selection, round_number)
    return pseudo_labeled_set(ctx, scores, selection, stage.labels)


def log_selection(ctx: StageContext, scores: pl.DataFrame, selection: pl.DataFrame) -> None:
    """The confidence histogram (all scored images vs the selected) and the selected table, for either source."""
    confidence = scores.filter(pl.col("rank") == 0)["prob"].to_numpy()
    ctx.log_figure(ctx.confidence_histogram(confidence, selection["prob"].to_numpy()),
                   "pseudo_labels/confidence.png")
    ctx.log_table(readable(ctx, selection), "pseudo_labels/selected.parquet")


def log_round(ctx: StageContext, scores: pl.DataFrame, selection: pl.DataFrame,
              round_number: int) -> dict[str, float]:
    """Pseudo-label diagnostics, the histogram of confidences, the table as parquet and dataset."""
    metrics, per_class = ctx.pseudo_label_diagnostics(scores, selection)
    ctx.log_metrics(metrics, step=round_number)
    log_selection(ctx, scores, selection)
    ctx.log_table(per_class, "pseudo_labels/per_class.parquet")
    ctx.log_table(per_class, "pseudo_labels/per_class.csv")
    ctx.log_dataset(selection, f"{ctx.stage.name}-pseudo-labels-round{round_number}", "pseudo_labels")
    return metrics


def pool_round(ctx: StageContext, stage: PseudoLabelStage, teacher, select, pool, round_number: int):
    """Score a file pool (streamed, chunked, cached), select lazily, log label-free diagnostics.

    The selected files are not decoded here: the student's batches read them.
    """
    who = stage.teacher if round_number == 1 else f"{stage.name} round {round_number - 1} student"
    table = ctx.score_pool(teacher, pool, top_p=stage.top_p, batch_size=stage.score_batch_size,
                           name=f"scores_round{round_number}", teacher=who, chunk_size=stage.score_chunk_size)
    scores = table.scan()
    selection = select(scores)
    if len(selection) == 0:
        raise ValueError(f"stage '{stage.name}', round {round_number}: the selection is empty")
    ctx.say(f"round {round_number}: selected {len(selection):,} rows of {len(pool):,} files")
    log_pool_round(ctx, scores, selection, round_number, pool)
    index = torch.from_numpy(selection["index"].to_numpy()).long()
    images = pool.files(index, ctx.info.in_channels, ctx.info.image_size)
    if stage.labels == "soft":
        targets = soft_targets(scores, index, ctx.info.num_classes)
    else:
        targets = F.one_hot(torch.from_numpy(selection["label"].to_numpy()).long(), ctx.info.num_classes).float()
    return images, index, targets


def readable(ctx: StageContext, selection: pl.DataFrame, pool=None) -> pl.DataFrame:
    """The selected table as a person joins it back: each row's file (a pool's) and class name beside its
    index and label number."""
    columns = []
    if pool is not None:
        rows = pool.rows_of(torch.from_numpy(selection["index"].to_numpy()).long()).tolist()
        columns.append(pl.Series("path", [pool.paths[r] for r in rows], dtype=pl.Utf8))
    names = ctx.info.class_names
    if names:
        columns.append(pl.Series("class_name", [names[c] for c in selection["label"].to_list()], dtype=pl.Utf8))
    return selection.with_columns(columns) if columns else selection


def log_pool_round(ctx: StageContext, scores: pl.LazyFrame, selection: pl.DataFrame, round_number: int,
                   pool=None):
    """What can be known without labels: the pool's top-1 class histogram and confidence
    distribution, and the selection's counts per class (``pool_diagnostics``)."""
    metrics, per_class = pool_diagnostics(scores, selection, class_names=ctx.info.class_names)
    ctx.log_metrics(metrics, step=round_number)
    ctx.log_figure(ctx.confidence_histogram(scores, selection["prob"].to_numpy()), "pseudo_labels/confidence.png")
    ctx.log_table(readable(ctx, selection, pool), "pseudo_labels/selected.parquet")
    ctx.log_table(per_class, "pseudo_labels/per_class.csv")


def run_pseudo_label(stage: PseudoLabelStage, ctx: StageContext) -> StageResult:
    pool = ctx.unlabeled_pool()
    if pool is None and len(ctx.splits.unlabeled) == 0:
        raise ValueError(f"stage '{stage.name}': the unlabeled split is empty; set data.labeled_per_class")
    teacher = ctx.teacher(stage.teacher)
    select = ctx.build_selection(stage.selection)
    result = None
    for round_number in range(1, stage.rounds + 1):
        with ctx.nested(f"round{round_number}", {"mentor.round": str(round_number)}):
            teacher.to(ctx.device)
            if pool is not None:
                images, index, targets = pool_round(ctx, stage, teacher, select, pool, round_number)
            else:
                images, index, targets = benchmark_round(ctx, stage, teacher, select, round_number)
            data, targets = training_set(ctx, stage, images, index, targets)
            student = ctx.build_model(stage.student, init=stage.init)
            targets = targets.to(ctx.device)

            def step(x, rows, student=student, targets=targets):
                logits = student(x)
                loss = F.cross_entropy(logits.float(), targets[rows], label_smoothing=stage.label_smoothing)
                return loss, {}

            last = round_number == stage.rounds
            result = ctx.fit(TrainTask(model=student, step=step, data=data), stage.student,
                             phase=f"round{round_number}/train", export=last and stage.finetune is None)
            if stage.finetune is not None:
                result = fine_tune(ctx, stage, student, round_number, export=last)
            teacher = student  # Noisy Student: the student labels the next round
    ctx.log_metrics(result.metrics, step=stage.epochs)  # the last round's summary, on the stage's own run
    return result


def fine_tune(ctx: StageContext, stage: PseudoLabelStage, student, round_number: int, export: bool) -> StageResult:
    cfg = stage.finetune
    return ctx.fit(ctx.supervised_task(student, cfg), stage.student, cfg,
                   phase=f"round{round_number}/finetune", step_offset=stage.epochs, export=export)


@hookimpl
def register_methods(register):
    register("pseudo_label", run_pseudo_label, params=PseudoLabelStage,
             description="a teacher labels the unlabeled split; a student pre-trains/fine-tunes or trains jointly")
