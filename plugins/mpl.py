"""Meta Pseudo Labels (Pham et al. 2021): a teacher that learns from how its labels teach.

The `mpl` stage: the unlabeled batches in two views (``consistency.UnlabeledFeed``), the
schedules, the epochs and the optional fine-tune. One step of teacher and
student is ``mpl_step.MetaPseudoLabels``, its loss terms are in ``mpl_terms``
and the options in ``mpl_config``. docs/mpl.md says what the step does, what
each option means and where the official code and kekmodel/MPL-pytorch differ
(tests/test_mpl.py checks the sign, the label modes, both views and the
baseline against an exact gradient through the student's step).
"""

from __future__ import annotations

import copy

import polars as pl
import torch
from torch import nn

from mentor import (
    StageContext,
    StageResult,
    TrainTask,
    build_optimizer,
    build_scheduler,
    derive_seed,
    distributed,
    hookimpl,
    lr_factor,
)

from .consistency import UnlabeledFeed
from .mpl_config import MPLStage
from .mpl_step import MetaPseudoLabels

# --- the stage ----------------------------------------------------------------------------


def _student_schedule(optimizer, stage: MPLStage, steps_per_epoch: int):
    """The stage's schedule for the student, starting after ``student_wait_steps`` (lr 0 until then)."""
    wait = stage.student_wait_steps
    epochs = max(stage.epochs - wait / max(steps_per_epoch, 1), 1e-8)

    def factor(step: int) -> float:
        if step < wait:
            return 0.0
        return lr_factor(stage.schedule, step - wait, steps_per_epoch, epochs, stage.optimizer.lr)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _teacher_accuracy(ctx: StageContext, stage: MPLStage, teacher: nn.Module,
                      rows: torch.Tensor | None) -> dict[str, float]:
    """Top-1 accuracy and mean confidence of the teacher on unlabeled images, from the core's diagnostics."""
    data = ctx.splits.unlabeled if rows is None else ctx.splits.unlabeled.subset(rows)
    was_training = teacher.training
    scores = ctx.score(teacher, data, top_p=1, batch_size=stage.score_batch_size)
    teacher.train(was_training)
    selection = scores.select("index", pl.col("class").alias("label"), "prob", "rank")
    metrics, _ = ctx.pseudo_label_diagnostics(scores, selection)
    return {"pseudo/teacher_accuracy": metrics["pseudo/teacher_accuracy"],
            "pseudo/teacher_confidence": metrics["pseudo/mean_confidence"]}


def run_mpl(stage: MPLStage, ctx: StageContext) -> StageResult:
    unlabeled = ctx.splits.unlabeled
    if len(unlabeled) == 0:
        raise ValueError(f"stage '{stage.name}': the unlabeled split is empty; set data.labeled_per_class")
    device = ctx.device
    teacher = ctx.build_model(stage.teacher, init=stage.teacher_init).to(device)
    student = ctx.build_model(stage.student, init=stage.init).to(device)
    labeled = ctx.training_data()
    global_batch = stage.batch_size * distributed.world_size()  # the loop's steps per epoch under torchrun
    steps_per_epoch = len(labeled) // global_batch if len(labeled) > global_batch else 1

    teacher_cfg = stage.teacher_optimizer or stage.optimizer
    teacher_optimizer = build_optimizer(teacher.parameters(), teacher_cfg, device)
    student_optimizer = build_optimizer(student.parameters(), stage.optimizer, device)
    teacher_schedule = build_scheduler(teacher_optimizer, stage.schedule, steps_per_epoch, stage.epochs,
                                       teacher_cfg.lr)
    student_schedule = _student_schedule(student_optimizer, stage, steps_per_epoch)
    ema = copy.deepcopy(student).requires_grad_(False) if stage.ema_decay else None
    mpl = MetaPseudoLabels(teacher, student, teacher_optimizer, student_optimizer, stage, ema=ema,
                           teacher_schedule=teacher_schedule, student_schedule=student_schedule, device=device)

    weak, strong = ctx.consistency_views(stage.strong_augment)
    feed = UnlabeledFeed(unlabeled, stage.batch_size * stage.unlabeled_ratio, weak, strong, mean=ctx.info.mean,
                         std=ctx.info.std, device=device, seed=derive_seed(ctx.seed, "unlabeled"))
    channels_last = ctx.runtime.channels_last

    rows = None
    if stage.teacher_accuracy_images is not None and stage.teacher_accuracy_images < len(unlabeled):
        g = torch.Generator().manual_seed(derive_seed(ctx.experiment.data.split_seed, "mpl-teacher-accuracy"))
        rows = torch.randperm(len(unlabeled), generator=g)[:stage.teacher_accuracy_images]

    def on_epoch(epoch: int) -> None:
        every = stage.teacher_accuracy_every
        if epoch > 0 and every and epoch % every == 0:
            ctx.log_metrics(_teacher_accuracy(ctx, stage, teacher, rows), step=epoch)  # the epoch that ended, 1-based
        feed.start(epoch)
        mpl.reseed(distributed.rank_seed(derive_seed(ctx.seed, "mpl", epoch)))

    def on_end() -> None:  # the teacher at the end, logged before the fit records its result
        ctx.log_metrics(_teacher_accuracy(ctx, stage, teacher, rows), step=stage.epochs)

    def step(x, y):
        x_uw, x_us = feed.next()
        if channels_last:
            x_uw = x_uw.contiguous(memory_format=torch.channels_last)
            x_us = x_us.contiguous(memory_format=torch.channels_last)
        metrics = mpl.step(x, y, x_uw, x_us)
        return metrics["student/loss/pseudo"], metrics

    extra = {"teacher": teacher} | ({"student": student} if ema is not None else {})
    task = TrainTask(model=ema if ema is not None else student, step=step, data=labeled, extra=extra,
                     on_epoch=on_epoch, on_end=on_end, manual=True, state=mpl.state(), averages_gradients=True)
    result = ctx.fit(task, stage.student, phase="mpl" if stage.finetune else None,
                     export=stage.finetune is None)
    if stage.finetune is not None:
        result = fine_tune(ctx, stage, task.model)
    return result


def fine_tune(ctx: StageContext, stage: MPLStage, model: nn.Module) -> StageResult:
    """The recipe's last phase: the (EMA) student on the labeled data alone."""
    cfg = stage.finetune
    model.requires_grad_(True)  # the EMA copy was kept out of autograd
    return ctx.fit(ctx.supervised_task(model, cfg), stage.student, cfg, phase="finetune", step_offset=stage.epochs)


@hookimpl
def register_methods(register):
    register("mpl", run_mpl, params=MPLStage,
             description="Meta Pseudo Labels: a teacher labels unlabeled batches and learns from the student's "
             "feedback (options: UDA, EMA student, fine-tune)")
