"""``data:``: the labeled source, how it is split, its augmentation and an unlabeled pool."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from ..params import Params
from .component_schema import ComponentSpec


class RandAugmentConfig(Params):
    num_ops: int = Field(default=2, ge=1, description="ops applied to each image")
    magnitude: int = Field(default=9, ge=0, le=30, description="strength of each op (0-30)")


class AugmentConfig(Params):
    """Augmentation applied to training batches (a separate draw per sample)."""

    crop_padding: int = Field(default=0, ge=0, description="random crop after zero padding")
    flip: bool = Field(default=False, description="random horizontal flip")
    randaugment: RandAugmentConfig | None = Field(default=None, description="strong augmentation (noise)")


class UnlabeledSpec(ComponentSpec):
    """An unlabeled pool from its own source (files on disk), instead of the labeled source's remainder."""

    kind: ClassVar[str] = "unlabeled_source"
    name_field: ClassVar[str] = "source"

    source: str = Field(description="a registered unlabeled source (see `mentor plugins`)")


class DataConfig(ComponentSpec):
    kind: ClassVar[str] = "data_source"
    name_field: ClassVar[str] = "source"

    source: str = Field(description="a registered data source (see `mentor plugins`)")
    val_size: int | float | Literal["auto"] = Field(
        default="auto", description="validation rows held out of train (class-balanced): a number of rows, a "
        "fraction of the train set (0.1), or auto: 10% of it, at most 5,000")
    labeled_per_class: int | None = Field(
        default=None, ge=1, description="labeled rows per class; the rest is unlabeled"
    )
    test_size: int | None = Field(default=None, ge=1, description="evaluate on a test subset")
    split_seed: int = Field(default=0, ge=0, lt=2**63, description="seed of the val/labeled/unlabeled split")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    unlabeled: UnlabeledSpec | None = Field(
        default=None, description="pseudo_label scores this pool of files; absent: the labeled source's remainder")

    @field_validator("val_size", mode="before")
    @classmethod
    def _rows_or_fraction(cls, value):
        if isinstance(value, bool):
            raise ValueError(f"{str(value).lower()} is not a size: give a number of rows, a fraction or auto")
        if isinstance(value, float) and not value.is_integer() and not 0 < value < 1:
            raise ValueError(f"{value} is neither a number of rows (a whole number) nor a fraction (between 0 "
                             "and 1)")
        if isinstance(value, float) and value.is_integer() and value >= 1:
            value = int(value)
        if isinstance(value, int | float) and value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value
