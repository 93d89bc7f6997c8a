"""Built-in stage kinds: supervised training and logit/feature distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mentor import hookimpl
from mentor.config.schema import LossSpec, ModelKey, StageName, TrainingStageConfig
from mentor.engine.loop import TrainTask
from mentor.losses import LABELS, TEACHER_LOGITS, Outputs


class TrainStage(TrainingStageConfig):
    """Supervised training of one model on the labeled split."""

    model: ModelKey = Field(description="a key of `models`")
    init: StageName | None = Field(default=None, description="start from this stage's weights")


def run_train(stage: TrainStage, ctx):
    model = ctx.build_model(stage.model, init=stage.init)

    def step(x, y):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=stage.label_smoothing)
        return loss, {}

    return ctx.fit(TrainTask(model=model, step=step, data=ctx.training_data()), stage.model)


def _default_losses() -> list[LossSpec]:
    return [LossSpec(name="cross_entropy", weight=0.1), LossSpec(name="kd", weight=0.9, params={"temperature": 4.0})]


class DistillStage(TrainingStageConfig):
    """A student learns from a trained teacher through a weighted sum of losses."""

    teacher: StageName = Field(description="the stage whose trained model teaches")
    student: ModelKey = Field(description="a key of `models`: the student's architecture")
    init: StageName | None = Field(default=None, description="start the student from this stage's weights")
    losses: list[LossSpec] = Field(default_factory=_default_losses, min_length=1)


def run_distill(stage: DistillStage, ctx):
    teacher = ctx.trained_model(stage.teacher)
    student = ctx.build_model(stage.student, init=stage.init)
    names = [spec.name for spec in stage.losses]
    terms = [  # a name used twice is logged as name_<index>
        (spec.name if names.count(spec.name) == 1 else f"{spec.name}_{i}", spec.weight, ctx.build_loss(spec))
        for i, spec in enumerate(stage.losses)
    ]
    for name, _, loss in terms:
        if loss.student_nodes or loss.teacher_nodes:
            raise ValueError(f"stage '{stage.name}': loss '{name}' asks for intermediate features, "
                             "which the distill stage does not extract yet")
    needs_teacher = any(TEACHER_LOGITS in loss.needs for _, _, loss in terms)
    needs_labels = any(LABELS in loss.needs for _, _, loss in terms)
    teacher.to(ctx.device)

    def step(x, y):
        logits = student(x)
        teacher_logits = None
        if needs_teacher:
            with torch.no_grad():
                teacher_logits = teacher(x)
        out = Outputs(student_logits=logits, labels=y if needs_labels else None, teacher_logits=teacher_logits)
        values = {name: loss(out) for name, _, loss in terms}
        total = sum(weight * values[name] for name, weight, _ in terms)
        return total, {f"loss/{name}": v for name, v in values.items()}

    task = TrainTask(
        model=student, step=step, data=ctx.training_data(),
        extra={"losses": nn.ModuleList([loss for _, _, loss in terms])},
        frozen={"teacher": teacher},
    )
    return ctx.fit(task, stage.student)


@hookimpl
def register_methods(register):
    register("train", run_train, params=TrainStage, description="supervised training on the labeled split")
    register("distill", run_distill, params=DistillStage,
             description="a student learns from a trained teacher through weighted loss terms")
