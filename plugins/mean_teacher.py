"""Mean Teacher (Tarvainen & Valpola 2017): a student pulled towards an EMA of itself.

A step: cross-entropy on the labeled batch, plus a consistency loss between
the student's predictions on one noisy view and the teacher's (the student's
EMA, no gradient) on another, for the unlabeled and the labeled images, with
a weight ramped up by ``exp(-5 (1 - t)^2)``. The teacher is evaluated, kept
and exported (``keep_model: student`` keeps the student). docs/fixmatch.md
describes the options and the differences from the reference code.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mentor import (
    Batch,
    ModelKey,
    StageContext,
    StageName,
    StageResult,
    StepInfo,
    TrainingStageConfig,
    TrainTask,
    build_optimizer,
    build_scheduler,
    derive_seed,
    distributed,
    hookimpl,
)

from .consistency import UnlabeledFeed, ema_update, steps_per_epoch, stretched, unlabeled_split
from .mean_teacher_terms import consistency_loss, sigmoid_rampup, teacher_decay
from .mpl_terms import _f32


class MeanTeacherStage(TrainingStageConfig):
    """Mean Teacher: the stage's training fields drive the student; the teacher is its EMA.

    ``batch_size`` is the labeled batch, ``unlabeled_ratio`` the unlabeled
    images per labeled one in a step; ``epochs`` count passes over the labeled
    split (or ``steps_per_epoch`` steps).
    """

    model: ModelKey = Field(description="a key of `models`: the student's architecture (and the teacher's)")
    init: StageName | None = Field(default=None, description="start from this stage's weights")
    unlabeled_ratio: int = Field(default=1, ge=1, description="unlabeled images per labeled image in a step")
    consistency: Literal["mse", "kl"] = Field(
        default="mse", description="mse: squared distance of the softmaxes (the paper); kl: KL(teacher || student)")
    consistency_weight: float = Field(default=100.0, ge=0, description="the consistency weight after the ramp-up")
    rampup_epochs: float = Field(default=5.0, ge=0, description="the weight ramps up as exp(-5 (1 - t)^2) over "
                                 "these epochs (fractional; counted in steps)")
    ema_decay: float = Field(default=0.999, gt=0, lt=1, description="the teacher's EMA decay")
    ema_decay_rampup: float | None = Field(
        default=None, gt=0, lt=1, description="the decay during the ramp-up (the paper: 0.99, then 0.999)")
    input_noise: float = Field(default=0.0, ge=0, description="std of Gaussian noise added to each view "
                               "(normalised pixels; the paper's ConvNet: 0.15)")
    keep_model: Literal["teacher", "student"] = Field(
        default="teacher", description="the model evaluated, kept and exported")
    steps_per_epoch: int | None = Field(
        default=None, ge=1, description="repeat the labeled split to this many steps per epoch (null: one pass)")


class MeanTeacher:
    """Student, teacher (its EMA), the student's optimizer and schedule; one step of the method."""

    def __init__(self, student: nn.Module, teacher: nn.Module, optimizer, options: MeanTeacherStage, *,
                 schedule=None, rampup_steps: float = 0.0, device="cpu", seed: int = 0):
        self.student, self.teacher, self.optimizer, self.schedule = student, teacher, optimizer, schedule
        self.options, self.rampup_steps = options, rampup_steps
        self.counter = Counter()
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        sigma = self.options.input_noise
        if sigma == 0:
            return x
        return x + sigma * torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)

    def weight(self) -> float:
        return self.options.consistency_weight * sigmoid_rampup(self.counter.step, self.rampup_steps)

    def losses(self, x_l, y_l, x_u1, x_u2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The student's loss (with its graph) and its terms; the teacher sees the second views, no gradient.

        The labeled images' second view is the same crop/flip with the teacher's
        own input noise and dropout (the loop hands over augmented batches only).
        """
        s_logits = _f32(self.student(self.noisy(torch.cat([x_l, x_u1]))))
        with torch.no_grad():
            t_logits = _f32(self.teacher(self.noisy(torch.cat([x_l, x_u2]))))
        loss_s = F.cross_entropy(s_logits[:len(x_l)], y_l, label_smoothing=self.options.label_smoothing)
        consistency = consistency_loss(s_logits, t_logits, self.options.consistency)
        weight = self.weight()
        return loss_s + weight * consistency, {"loss_s": loss_s, "loss_u": consistency,
                                               "consistency_weight": torch.tensor(weight)}

    def step(self, x_l, y_l, x_u1, x_u2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        metrics = {"lr": torch.tensor(self.optimizer.param_groups[0]["lr"])}
        total, terms = self.losses(x_l, y_l, x_u1, x_u2)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        distributed.average_gradients(self.student)
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()
        opt = self.options
        decay = teacher_decay(self.counter.step, opt.ema_decay, opt.ema_decay_rampup,
                              self.counter.step < self.rampup_steps)
        ema_update(self.teacher, self.student, decay)
        self.counter.step += 1
        metrics.update({k: v.detach() for k, v in terms.items()})
        metrics["ema_decay"] = torch.tensor(decay)
        return total.detach(), metrics

    def state(self) -> dict:
        state = {"optimizer": self.optimizer, "counter": self.counter}
        if self.schedule is not None:
            state["schedule"] = self.schedule
        return state


class Counter:
    """The step count (the ramp-up's and the decay's clock), checkpointed with the loop's state."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


class MeanTeacherStep:
    """The stage's step (``mentor.Step``): a labeled batch, two views of an unlabeled one, one update;
    each epoch starts the unlabeled feed and the noise generator from the stage's seed and the epoch."""

    def __init__(self, method: MeanTeacher, feed: UnlabeledFeed, ctx: StageContext):
        self.method, self.feed, self.ctx = method, feed, ctx

    def epoch_start(self, epoch: int) -> None:
        self.feed.start(epoch)
        self.method.generator.manual_seed(distributed.rank_seed(derive_seed(self.ctx.seed, "mean-teacher-noise",
                                                                            epoch)))

    def __call__(self, batch: Batch, info: StepInfo):
        x_u1, x_u2 = self.feed.next()
        if self.ctx.runtime.channels_last:
            x_u1 = x_u1.contiguous(memory_format=torch.channels_last)
            x_u2 = x_u2.contiguous(memory_format=torch.channels_last)
        return self.method.step(batch.inputs, batch.targets, x_u1, x_u2)


def run_mean_teacher(stage: MeanTeacherStage, ctx: StageContext) -> StageResult:
    unlabeled = unlabeled_split(ctx)
    device = ctx.device
    student = ctx.build_model(stage.model, init=stage.init).to(device)
    teacher = copy.deepcopy(student).requires_grad_(False)
    labeled = stretched(ctx.training_data(), stage.steps_per_epoch, stage.batch_size)
    steps = steps_per_epoch(labeled, stage.batch_size)
    optimizer = build_optimizer(student.parameters(), stage.optimizer, device)
    schedule = build_scheduler(optimizer, stage.schedule, steps, stage.epochs, stage.optimizer.lr)
    method = MeanTeacher(student, teacher, optimizer, stage, schedule=schedule,
                         rampup_steps=stage.rampup_epochs * steps, device=device,
                         seed=derive_seed(ctx.seed, "mean-teacher-noise"))
    view, _ = ctx.consistency_views(None)
    feed = UnlabeledFeed(unlabeled, stage.batch_size * stage.unlabeled_ratio, view, view,
                         mean=ctx.info.mean, std=ctx.info.std, device=device, seed=derive_seed(ctx.seed, "unlabeled"))

    kept, other = (teacher, student) if stage.keep_model == "teacher" else (student, teacher)
    task = TrainTask(model=kept, step=MeanTeacherStep(method, feed, ctx), data=labeled,
                     extra={"student" if kept is teacher else "teacher": other}, manual=True, state=method.state(),
                     averages_gradients=True)
    return ctx.fit(task, stage.model)


@hookimpl
def register_methods(register):
    register("mean_teacher", run_mean_teacher, params=MeanTeacherStage,
             description="Mean Teacher: a student trained with a consistency loss towards its EMA teacher, "
             "which is kept")
