"""The `mpl` stage's options (their meaning and the references' choices: docs/mpl.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mentor import (
    MAX_MAGNITUDE,
    ModelKey,
    OptimizerConfig,
    Params,
    StageName,
    TrainingConfig,
    TrainingStageConfig,
)


class UDAConfig(Params):
    """UDA on the teacher (Xie et al. 2020), as in the MPL recipe: labeled CE + weighted consistency."""

    threshold: float = Field(default=0.6, ge=0, le=1,
                             description="keep unlabeled images whose sharpened weak-view confidence is >= this")
    temperature: float = Field(default=0.7, gt=0, description="sharpening of the weak-view target")
    weight: float = Field(default=8.0, ge=0, description="weight of the consistency term after the ramp")
    ramp_steps: int = Field(default=5000, ge=0, description="the weight ramps linearly to `weight` over these steps")
    labeled_weight: float = Field(default=1.0, ge=0, description="weight of the teacher's labeled cross-entropy")


class StrongAugmentConfig(Params):
    """The strong view: the stage's crop/flip, then RandAugment(num_ops, magnitude), then Cutout."""

    num_ops: int = Field(default=2, ge=0, description="RandAugment ops per image")
    magnitude: float = Field(default=16, ge=0, le=MAX_MAGNITUDE, description="op strength on the 0-30 scale")
    cutout: float = Field(default=0.5, ge=0, le=1, description="cutout square side / image side (0 = off)")


class MPLStage(TrainingStageConfig):
    """Meta Pseudo Labels: teacher and student trained together, one step each per batch.

    The stage's training fields drive the student: ``batch_size`` is the
    labeled batch, ``epochs`` count passes over the labeled split (one step
    per labeled batch), ``optimizer``/``schedule``/``label_smoothing`` are the
    student's (the teacher shares the schedule and smoothing, and has
    ``teacher_optimizer``). docs/mpl.md explains the options.
    """

    student: ModelKey = Field(description="a key of `models`: the student's architecture (exported)")
    teacher: ModelKey = Field(description="a key of `models`: the teacher's architecture")
    init: StageName | None = Field(default=None, description="start the student from this stage's weights")
    teacher_init: StageName | None = Field(default=None, description="start the teacher from this stage's weights")
    unlabeled_ratio: int = Field(default=7, ge=1, description="unlabeled images per labeled image in a step")
    labels: Literal["sampled", "argmax", "soft"] = Field(
        default="sampled",
        description="sampled: a class drawn from the teacher's softmax (paper's derivation; unbiased); "
        "argmax: the teacher's top class (kekmodel/MPL-pytorch; a heuristic); "
        "soft: the teacher's softmax (official code, whose MPL gradient is zero; here exact to first order)")
    label_view: Literal["strong", "weak"] = Field(
        default="strong", description="the view whose teacher logits make the pseudo-labels (and the MPL term)")
    feedback_sign: Literal["old_minus_new", "new_minus_old"] = Field(
        default="old_minus_new",
        description="old_minus_new: h = L_old - L_new, the paper's first-order feedback (descends the student's "
        "labeled loss); new_minus_old: the official code's and kekmodel's sign (ascends it)")
    baseline: Literal["none", "ema"] = Field(
        default="ema", description="subtract a moving average of h (hard labels; variance reduction, no bias)")
    baseline_decay: float = Field(default=0.99, ge=0, lt=1, description="decay of the moving baseline")
    student_wait_steps: int = Field(
        default=0, ge=0, description="steps before the student learns; no MPL term until then")
    uda: UDAConfig | None = Field(default=None, description="MPL + UDA: the teacher also learns from labels and UDA")
    ema_decay: float | None = Field(
        default=None, gt=0, lt=1, description="evaluate and export an EMA of the student (e.g. 0.995)")
    strong_augment: StrongAugmentConfig = Field(default_factory=StrongAugmentConfig)
    teacher_optimizer: OptimizerConfig | None = Field(default=None, description="defaults to the stage's optimizer")
    finetune: TrainingConfig | None = Field(default=None, description="then train the student on labeled data only")
    teacher_accuracy_every: int = Field(
        default=1, ge=0, description="log pseudo/teacher_accuracy every n epochs (0 = only after training)")
    teacher_accuracy_images: int | None = Field(
        default=5000, ge=1, description="unlabeled images scored for it (a fixed random subset; null = all)")
    score_batch_size: int = Field(default=1024, ge=1)


