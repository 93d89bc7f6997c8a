"""FixMatch (Sohn et al. 2020), optionally with FlexMatch's thresholds (Zhang et al. 2021).

A step: cross-entropy on a weakly augmented labeled batch, plus, on ``mu``
times as many unlabeled images, the model's argmax on their weak view learned
on their strong view where its confidence reaches the threshold. An EMA of
the model is evaluated, kept and exported. The loss terms are in
``fixmatch_terms``, the options in ``fixmatch_config``; docs/fixmatch.md says
where this differs from the reference implementations.
"""

from __future__ import annotations

import copy

import polars as pl
import torch
import torch.nn.functional as F
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

from .consistency import UnlabeledFeed, ema_update, fixmatch_cosine, steps_per_epoch, stretched, unlabeled_split
from .fixmatch_config import FixMatchStage
from .fixmatch_terms import PredictionMemory, unlabeled_loss
from .mpl_terms import _f32


class FixMatch:
    """The model, its EMA, optimizer and schedule, FlexMatch's memory; one step of the method."""

    def __init__(self, model: nn.Module, optimizer, options: FixMatchStage, *, ema: nn.Module | None = None,
                 schedule=None, memory: PredictionMemory | None = None):
        self.model, self.ema, self.optimizer, self.schedule = model, ema, optimizer, schedule
        self.options, self.memory = options, memory

    def losses(self, x_l, y_l, x_uw, x_us, rows=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss (with its graph) and the step's terms: one forward of the three batches together,
        in train mode (as the references do: BatchNorm sees labeled and unlabeled images at once)."""
        opt = self.options
        logits = _f32(self.model(torch.cat([x_l, x_uw, x_us])))
        l_x, l_uw, l_us = logits.split([len(x_l), len(x_uw), len(x_us)])
        loss_s = F.cross_entropy(l_x, y_l, label_smoothing=opt.label_smoothing)
        threshold = self.memory.thresholds() if self.memory is not None else opt.threshold
        loss_u, mask, labels, confidence = unlabeled_loss(l_uw, l_us, threshold, hard=opt.hard_labels,
                                                          temperature=opt.temperature)
        if self.memory is not None and rows is not None:
            self.memory.update(rows, labels, confidence)
        terms = {"loss_s": loss_s, "loss_u": loss_u, "mask": mask, "labels": labels, "confidence": confidence}
        if isinstance(threshold, torch.Tensor):
            terms["threshold"] = threshold
        return loss_s + opt.lambda_u * loss_u, terms

    def step(self, x_l, y_l, x_uw, x_us, rows=None):
        """A full step (loss, optimizer, schedule, EMA): the loss, the metrics to average and the terms."""
        metrics = {"lr": torch.tensor(self.optimizer.param_groups[0]["lr"])}
        total, terms = self.losses(x_l, y_l, x_uw, x_us, rows)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        distributed.average_gradients(self.model)
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()
        if self.ema is not None:
            ema_update(self.ema, self.model, self.options.ema_decay)
        metrics.update({"loss_s": terms["loss_s"].detach(), "loss_u": terms["loss_u"].detach(),
                        "fixmatch/confidence": terms["confidence"].mean()})
        if "threshold" in terms:
            metrics["flexmatch/threshold"] = terms["threshold"].mean()
        return total.detach(), metrics, terms

    def state(self) -> dict:
        state = {"optimizer": self.optimizer}
        if self.schedule is not None:
            state["schedule"] = self.schedule
        if self.memory is not None:
            state["memory"] = self.memory
        return state


def _schedule(optimizer, stage: FixMatchStage, steps: int):
    """The stage's schedule, or FixMatch's cos(7 pi k / 16K) after ``schedule.warmup_epochs``."""
    if stage.lr_decay == "schedule":
        return build_scheduler(optimizer, stage.schedule, steps, stage.epochs, stage.optimizer.lr)
    warmup = stage.schedule.warmup_epochs * steps
    total = stage.epochs * steps

    def factor(step: int) -> float:
        if step < warmup:
            return lr_factor(stage.schedule, step, steps, stage.epochs, stage.optimizer.lr)
        return fixmatch_cosine(step - warmup, total - warmup)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class EpochRecord:
    """The pseudo-labels of an epoch's steps (unlabeled index, label, confidence, mask), for its diagnostics."""

    def __init__(self):
        self.parts: list[tuple[torch.Tensor, ...]] = []

    def add(self, index, labels, confidence, mask) -> None:
        self.parts.append((index, labels.detach(), confidence.detach(), mask.detach()))

    def metrics(self, ctx: StageContext) -> dict[str, float]:
        """``fixmatch/mask_rate`` and, from the core's diagnostics (the hidden labels stay there),
        ``fixmatch/pseudo_label_accuracy`` of the masked pseudo-labels and ``..._all`` of every one."""
        if not self.parts:
            return {}
        index, labels, confidence, mask = (torch.cat([p[i].cpu() for p in self.parts]) for i in range(4))
        self.parts = []
        scores = pl.DataFrame({"index": index.numpy(), "rank": 0, "class": labels.numpy(),
                               "prob": confidence.float().numpy()},
                              schema={"index": pl.Int64, "rank": pl.Int32, "class": pl.Int32, "prob": pl.Float32})
        kept = mask.bool().numpy()
        selection = scores.filter(pl.Series(kept)).select("index", pl.col("class").alias("label"), "prob")
        found, _ = ctx.pseudo_label_diagnostics(scores, selection)
        metrics = {"fixmatch/mask_rate": float(mask.float().mean()),
                   "fixmatch/pseudo_label_accuracy_all": found["pseudo/teacher_accuracy"]}
        if len(selection):
            metrics["fixmatch/pseudo_label_accuracy"] = found["pseudo/precision"]
        return metrics


def run_fixmatch(stage: FixMatchStage, ctx: StageContext) -> StageResult:
    unlabeled = unlabeled_split(ctx)
    device = ctx.device
    model = ctx.build_model(stage.model, init=stage.init).to(device)
    labeled = stretched(ctx.training_data(), stage.steps_per_epoch, stage.batch_size)
    steps = steps_per_epoch(labeled, stage.batch_size)
    optimizer = build_optimizer(model.parameters(), stage.optimizer, device)
    ema = copy.deepcopy(model).requires_grad_(False) if stage.ema_decay else None
    flex = stage.flexmatch_options
    memory = (PredictionMemory(len(unlabeled), ctx.info.num_classes, stage.threshold, flex.warmup, device)
              if flex is not None else None)
    method = FixMatch(model, optimizer, stage, ema=ema, schedule=_schedule(optimizer, stage, steps), memory=memory)

    weak, strong = ctx.consistency_views(stage.strong_augment)
    feed = UnlabeledFeed(unlabeled, stage.batch_size * stage.unlabeled_ratio, weak, strong, mean=ctx.info.mean,
                         std=ctx.info.std, device=device, seed=derive_seed(ctx.seed, "unlabeled"))
    record = EpochRecord()
    trained = {"epochs": 0}

    def on_epoch(epoch: int) -> None:
        if epoch > 0:
            ctx.log_metrics(record.metrics(ctx), step=epoch)  # the epoch that ended, 1-based
        feed.start(epoch)
        trained["epochs"] += 1

    def step(x, y):
        x_uw, x_us = feed.next()
        if ctx.runtime.channels_last:
            x_uw = x_uw.contiguous(memory_format=torch.channels_last)
            x_us = x_us.contiguous(memory_format=torch.channels_last)
        loss, metrics, terms = method.step(x, y, x_uw, x_us, feed.rows)
        record.add(unlabeled.index[feed.rows], terms["labels"], terms["confidence"], terms["mask"])
        return loss, metrics

    task = TrainTask(model=ema if ema is not None else model, step=step, data=labeled,
                     extra={"model": model} if ema is not None else {}, on_epoch=on_epoch, manual=True,
                     state=method.state(), averages_gradients=True)
    result = ctx.fit(task, stage.model)
    if trained["epochs"]:  # the last epoch's pseudo-labels (none when a finished stage is resumed)
        ctx.log_metrics(record.metrics(ctx), step=stage.epochs)
    return result


@hookimpl
def register_methods(register):
    register("fixmatch", run_fixmatch, params=FixMatchStage,
             description="FixMatch: confident weak-view pseudo-labels learned on a strong view, EMA model kept "
             "(option: FlexMatch's class-adaptive thresholds)")
