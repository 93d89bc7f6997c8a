"""A distill stage's ``teacher_cache:`` field: its settings and the forms it accepts (docs/teacher_cache.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Discriminator, Field, Tag

from ..params import Params


class TeacherCacheConfig(Params):
    """A frozen teacher's outputs computed once per recorded augmented view, on disk, shared (docs/teacher_cache.md).

    Each training image gets ``views`` recorded augmentations (its crop offsets,
    flip, RandAugment ops); the teacher runs once per view, ahead of training,
    and each epoch the student sees one of them, rebuilt exactly, with the
    stored output. No augmentation: one view. The cache lives in
    ``tracking.cache_dir``, keyed by the teacher's weights, the data, the
    augmentation and these settings, and is reused by every stage, run and
    sweep trial with the same key.
    """

    views: int = Field(default=8, ge=1, le=4096, description="recorded augmented views per training image "
                       "(each epoch shows one of them; 1 without augmentation)")
    store: Literal["float16", "float32"] = Field(
        default="float16", description="how outputs are stored: float16 (half the disk; exact for bf16 "
        "teachers, within float16 rounding for fp32 ones) or float32 (the teacher's fp32 outputs exactly)")
    top_k: int | None = Field(default=None, ge=1, description="keep only the k largest logits of each view "
                              "(the others are stored as their mean): for many classes; approximate. "
                              "Default: all logits (exact)")
    max_gb: float = Field(default=8.0, gt=0, description="the largest cache to build; a larger one is not "
                          "built and the teacher runs live (logged)")
    seed: int = Field(default=0, ge=0, description="seeds the recorded views (not the stage's seed, so that "
                      "stages and trials with other seeds share the cache)")


def _cache_switch(value: Any) -> Any:
    """``teacher_cache: true`` is the default settings, ``false`` none; a word other than auto is refused here,
    so that the message says what the field takes."""
    if value is True:
        return {}
    if value is False:
        return None
    if isinstance(value, str) and value != "auto":
        raise ValueError(f"expected true, false, auto or settings ({', '.join(TeacherCacheConfig.model_fields)}), "
                         f"got {value!r}")
    return value


def _cache_kind(value: Any) -> str:
    return "[auto]" if isinstance(value, str) else "[settings]"


TeacherCacheOption = Annotated[
    Annotated[Annotated[TeacherCacheConfig, Tag("[settings]")] | Annotated[Literal["auto"], Tag("[auto]")],
              Discriminator(_cache_kind)] | None,
    BeforeValidator(_cache_switch)]
"""A stage's ``teacher_cache:`` field: settings, ``true`` (the default settings), ``false`` (off), or ``auto``:
on where it is exact and costs no augmentation (the stage has none: one view, stored in float32, is the live
teacher's output bit for bit), off otherwise."""


def exact_cache() -> TeacherCacheConfig:
    """What ``teacher_cache: auto`` uses on a stage without augmentation: one view, float32, at most 1 GB
    (a larger cache is only built when asked for)."""
    return TeacherCacheConfig(views=1, store="float32", max_gb=1.0)
