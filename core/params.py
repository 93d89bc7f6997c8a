"""The one strict base model: every parameter and config model in mentor subclasses it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Base of a component's parameter model and of every config section.

    Unknown keys are errors, and no float may be infinite or NaN (an infinite
    learning rate or temperature can only fail later, far from the file).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class NoParams(Params):
    """For components that take no parameters."""
