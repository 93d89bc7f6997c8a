"""The `fixmatch` stage's options (docs/fixmatch.md: their meaning and the papers' settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mentor import ModelKey, Params, StageName, TrainingStageConfig

from .mpl_config import StrongAugmentConfig


class FlexMatchConfig(Params):
    """FlexMatch's class-adaptive thresholds (Zhang et al. 2021) on top of FixMatch's ``threshold``."""

    warmup: bool = Field(default=True, description="count the unused images in the normaliser (the paper's "
                         "threshold warm-up): thresholds start low and rise as images get confident labels")


class FixMatchStage(TrainingStageConfig):
    """FixMatch: cross-entropy on labeled batches plus confident weak-view labels learned on the strong view.

    The stage's training fields drive the model: ``batch_size`` is the labeled
    batch (B), ``unlabeled_ratio`` (mu) makes the unlabeled one, ``epochs``
    count passes over the labeled split (or ``steps_per_epoch`` steps).
    """

    model: ModelKey = Field(description="a key of `models`: the architecture trained (its EMA is kept)")
    init: StageName | None = Field(default=None, description="start from this stage's weights")
    unlabeled_ratio: int = Field(default=7, ge=1, description="mu: unlabeled images per labeled image in a step")
    threshold: float = Field(default=0.95, gt=0, le=1,
                             description="tau: a pseudo-label counts when the weak view's top probability is >= this")
    lambda_u: float = Field(default=1.0, ge=0, description="weight of the unlabeled loss")
    hard_labels: bool = Field(default=True, description="true: the weak view's argmax (the paper); false: its "
                              "softmax sharpened by `temperature` (the mask still uses the plain softmax)")
    temperature: float = Field(default=1.0, gt=0, description="soft labels only: softmax(logits / temperature)")
    ema_decay: float | None = Field(default=0.999, gt=0, lt=1,
                                    description="evaluate, keep and export an EMA of the model (null: the model)")
    flexmatch: FlexMatchConfig | bool = Field(
        default=False, description="true (or a mapping): FlexMatch's class-adaptive thresholds")
    lr_decay: Literal["fixmatch_cosine", "schedule"] = Field(
        default="fixmatch_cosine", description="fixmatch_cosine: lr * cos(7 pi k / 16K) over the K steps (after "
        "schedule.warmup_epochs); schedule: the stage's `schedule`")
    steps_per_epoch: int | None = Field(
        default=None, ge=1, description="repeat the labeled split to this many steps per epoch (null: one pass)")
    strong_augment: StrongAugmentConfig = Field(
        default_factory=lambda: StrongAugmentConfig(num_ops=2, magnitude=10, cutout=0.5),
        description="the strong view: crop/flip, RandAugment(num_ops, magnitude), Cutout")

    @model_validator(mode="after")
    def _checks(self):
        if self.lr_decay == "fixmatch_cosine" and self.schedule.name != "cosine":
            raise ValueError(f"schedule.name {self.schedule.name!r} applies with lr_decay: schedule only "
                             "(fixmatch_cosine uses schedule.warmup_epochs alone)")
        if self.hard_labels and self.temperature != 1.0:
            raise ValueError("temperature applies with hard_labels: false only")
        return self

    @property
    def flexmatch_options(self) -> FlexMatchConfig | None:
        if self.flexmatch is True:
            return FlexMatchConfig()
        return self.flexmatch or None
