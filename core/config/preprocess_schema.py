"""``models.<key>.preprocess``: the input pipeline a model was trained with, stated in the experiment file.

A teacher trained by a user's own script expects what that script fed it;
this says it (docs/own_teacher.md). Unstated fields come from the model's
weights, its recorded pipeline, or the data (``mentor.model_input``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..params import Params


class PreprocessSpec(Params):
    """What a model expects of an image, and the order of its outputs."""

    image_size: int | tuple[int, int] | None = Field(
        default=None, description="its input's height and width (one number: square); images are resized by "
        "the shorter side, then centre-cropped")
    channels: Literal[1, 3] | None = Field(
        default=None, description="1 (grayscale, by ITU-R 601 luma) or 3 (a grayscale image repeated)")
    mean: list[float] | None = Field(
        default=None, description="per channel on the [0, 1] scale, as torchvision's Normalize takes it "
        "(ImageNet: [0.485, 0.456, 0.406])")
    std: list[float] | None = Field(default=None, description="per channel on the [0, 1] scale "
                                    "(ImageNet: [0.229, 0.224, 0.225])")
    classes: list[str] | None = Field(
        default=None, description="the class each output stands for, in the model's order (its training "
        "script's class_to_idx); the data's classes are matched by name")

    @field_validator("image_size")
    @classmethod
    def _size(cls, value):
        sizes = (value,) if isinstance(value, int) else (value or ())
        if any(not 1 <= s <= 8192 for s in sizes):
            raise ValueError(f"image_size {value} is not between 1 and 8192 pixels")
        return value

    @field_validator("mean", "std")
    @classmethod
    def _unit_scale(cls, values, info):
        if values is None:
            return values
        if not values or len(values) > 3:
            raise ValueError(f"{info.field_name} needs one value per channel (1 or 3), got {len(values)}")
        if any(v > 1 for v in values):
            raise ValueError(f"{info.field_name} {values} looks like the 0-255 scale: give it on the [0, 1] "
                             f"scale (divide by 255)")
        if any(v < 0 for v in values) or (info.field_name == "std" and any(v <= 0 for v in values)):
            raise ValueError(f"{info.field_name} {values} must be " + ("> 0" if info.field_name == "std" else ">= 0"))
        return values

    @field_validator("classes")
    @classmethod
    def _unique(cls, values):
        if values is not None:
            seen = [c for i, c in enumerate(values) if c in values[:i]]
            if seen:
                raise ValueError(f"class {seen[0]!r} is listed twice")
            if not values:
                raise ValueError("classes is empty: leave it out for the data's order")
        return values

    @model_validator(mode="after")
    def _channels_agree(self):
        lengths = {name: len(v) for name, v in (("mean", self.mean), ("std", self.std)) if v is not None}
        if self.channels is not None:
            lengths["channels"] = self.channels
        if len(set(lengths.values())) > 1:
            raise ValueError("mean, std and channels disagree on the number of channels (" +
                             ", ".join(f"{k} {v}" for k, v in lengths.items()) + ")")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give mean and std together")
        return self

    def fields(self) -> dict:
        """The stated fields, with channels implied by mean and std."""
        out = self.model_dump(exclude_none=True)
        if self.channels is None and self.mean is not None:
            out["channels"] = len(self.mean)
        return out
