"""Built-in stage kinds: supervised training and distillation (logits and features)."""

from __future__ import annotations

import torch
from pydantic import Field, field_validator
from torch import nn

from mentor import (
    INDEX,
    LABELS,
    TEACHER_LOGITS,
    FeatureError,
    FeatureTap,
    ImageSet,
    LossSpec,
    ModelKey,
    Outputs,
    StageContext,
    StageName,
    StageResult,
    StepInfo,
    TeacherCacheOption,
    TeacherRef,
    TrainingStageConfig,
    TrainTask,
    WeightSchedule,
    flatten_positions,
    hookimpl,
    probe,
    teacher_model_key,
)


class TrainStage(TrainingStageConfig):
    """Supervised training of one model on the labeled split."""

    model: ModelKey = Field(description="a key of `models`")
    init: StageName | None = Field(default=None, description="start from this stage's weights")


def run_train(stage: TrainStage, ctx: StageContext) -> StageResult:
    model = ctx.build_model(stage.model, init=stage.init)
    return ctx.fit(ctx.supervised_task(model), stage.model)


def _default_losses() -> list[LossSpec]:
    return [LossSpec(name="cross_entropy", weight=0.1), LossSpec(name="kd", weight=0.9, params={"temperature": 4.0})]


class DistillStage(TrainingStageConfig):
    """A student learns from a trained teacher through a weighted sum of losses.

    Losses that read intermediate features name their nodes (see `mentor
    layers`); only those nodes are extracted, the teacher's without gradient.
    """

    teacher: TeacherRef = Field(
        description="who teaches: an earlier stage (its trained model) or a `models` key with weights")
    student: ModelKey = Field(description="a key of `models`: the student's architecture")
    init: StageName | None = Field(default=None, description="start the student from this stage's weights")
    losses: list[LossSpec] = Field(default_factory=_default_losses, min_length=1)
    teacher_cache: TeacherCacheOption = Field(
        default="auto", description="run the teacher once per recorded augmented view ahead of training and "
        "read its outputs from disk: `true` or settings (docs/teacher_cache.md), `false`, or `auto` (the "
        "default): on where it is exact, a stage without augmentation")

    @field_validator("losses")
    @classmethod
    def _some_weight(cls, losses: list[LossSpec]) -> list[LossSpec]:
        if sum(spec.peak_weight for spec in losses) <= 0:
            raise ValueError("the loss weights sum to 0: the student would learn nothing; give a term a weight > 0")
        return losses

    def check(self, experiment, registry):
        """Every node a loss names exists in the student's or the teacher's model."""
        keys = {"student": self.student, "teacher": teacher_model_key(experiment, self.teacher)}
        models = {}
        for role, key in keys.items():
            # node names do not depend on the data's classes or channels (a uri-only model: known at run time)
            if key is not None and experiment.models[key].name is not None:
                spec = experiment.models[key]
                params = {k: v for k, v in spec.params.items() if k != "weights"}  # no download to name nodes
                models[role] = registry.get("model", spec.name).make_model(10, 3, (32, 32), **params)
        problems = []
        for i, spec in enumerate(self.losses):
            if isinstance(spec.weight, WeightSchedule) and spec.weight.epochs > self.epochs:
                problems.append((("losses", i, "weight", "epochs"),
                                 f"the schedule ramps over {spec.weight.epochs} epochs but the stage trains "
                                 f"{self.epochs}: it would never reach its end weight {spec.weight.end}"))
            loss = registry.get("loss", spec.name).factory(**spec.params)
            for role, nodes in (("student", loss.student_nodes), ("teacher", loss.teacher_nodes)):
                if nodes and role in models:
                    try:
                        FeatureTap(models[role], nodes, role)
                    except FeatureError as exc:
                        problems.append((("losses", i, "params"), str(exc)))
        return problems


def _loss_names(specs: list[LossSpec]) -> list[str]:
    """Each term's metric name: the loss name, or name_<index> if it is used twice."""
    names = [spec.name for spec in specs]
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]


def run_distill(stage: DistillStage, ctx: StageContext) -> StageResult:
    teacher = ctx.teacher(stage.teacher)
    student = ctx.build_model(stage.student, init=stage.init)
    names = _loss_names(stage.losses)
    losses = [ctx.build_loss(spec) for spec in stage.losses]

    data = ctx.training_data()
    needs_index = any(INDEX in loss.needs for loss in losses)
    if needs_index:  # a per-sample memory (CRD)
        for loss in losses:
            loss.dataset_size, loss.dataset_labels = len(data), data.labels
    student_nodes = [n for loss in losses for n in loss.student_nodes]
    teacher_nodes = [n for loss in losses for n in loss.teacher_nodes]
    student_tap = FeatureTap(student, student_nodes, "student")
    teacher_tap = FeatureTap(teacher, teacher_nodes, "teacher")
    if student_nodes or teacher_nodes:  # regressors are shaped from one probed batch
        example = ctx.example()
        student_shapes = probe(student, example, student_nodes) if student_nodes else {}
        teacher_shapes = probe(teacher, example, teacher_nodes) if teacher_nodes else {}
        for i, loss in enumerate(losses):
            try:
                loss.build(student_shapes, teacher_shapes)
            except ValueError as exc:  # a bad parameter for this model or data: located, before training
                raise ctx.config_error(("stages", ctx.index, "losses", i, "params"), str(exc)) from None
    run_teacher = bool(teacher_nodes) or any(TEACHER_LOGITS in loss.needs for loss in losses)
    needs_labels = any(LABELS in loss.needs for loss in losses)
    cache = None
    if run_teacher:  # None: off, or the teacher must run live (the context says why)
        cache = ctx.cached_teacher(teacher, stage.teacher_cache, data=data, nodes=teacher_nodes, label=stage.teacher)
    labels_of_rows = None
    if needs_index or cache is not None:  # batches carry row numbers (CRD's memory, the cache); labels looked up
        labels_of_rows = data.labels.to(ctx.device)
        data = ImageSet(data.images, torch.arange(len(data)), data.index)
    def step(x, y, info: StepInfo):
        rows = None
        if labels_of_rows is not None:
            rows, y = y, labels_of_rows[y]
        logits, s_features = student_tap(x)
        t_logits, t_features = None, {}
        if cache is not None:
            t_logits, t_features = cache.outputs(rows, info.epoch)
        elif run_teacher:
            with torch.no_grad():
                t_logits, t_features = teacher_tap(x)
        out = Outputs(student_logits=logits, labels=y if needs_labels else None, teacher_logits=t_logits,
                      student_features=s_features, teacher_features=t_features, epoch=info.epoch,
                      index=rows if needs_index else None)
        values = [loss(out) for loss in losses]
        weights = [spec.weight_at(info.epoch) for spec in stage.losses]
        total = sum(w * v for w, v in zip(weights, values, strict=True))
        logged = {f"loss/{n}": v for n, v in zip(names, values, strict=True)}
        counted, truth = flatten_positions(logits.detach(), y)  # per token: the positions that count
        logged["accuracy"] = (counted.argmax(1) == truth).float().mean()  # against the true labels
        logged.update({f"weight/{n}": torch.tensor(w) for n, w, spec in zip(names, weights, stage.losses, strict=True)
                       if not isinstance(spec.weight, float | int)})  # a scheduled weight, as it was
        return total, logged

    if cache is not None:
        teacher.to("cpu")  # its outputs are read from the cache: free the device's memory
    task = TrainTask(
        model=student, step=step, data=data,
        extra={"losses": nn.ModuleList(losses)},  # regressors: trained, checkpointed, not exported
        frozen={} if cache is not None else {"teacher": teacher},
        views=cache.views if cache is not None else None,
    )
    return ctx.fit(task, stage.student)


@hookimpl
def register_methods(register):
    register("train", run_train, params=TrainStage, description="supervised training on the labeled split",
             targets=("example", "token"))
    register("distill", run_distill, params=DistillStage,
             description="a student learns from a trained teacher through weighted loss terms",
             targets=("example", "token"))  # each loss says which it takes
