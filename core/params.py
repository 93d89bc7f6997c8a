"""The one strict base model: every parameter and config model in mentor subclasses it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Base of a component's parameter model and of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class NoParams(Params):
    """For components that take no parameters."""
