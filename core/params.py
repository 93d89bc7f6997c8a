"""The one strict base model: every parameter and config model in mentor subclasses it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Base of a component's parameter model and of every config section.

    Unknown keys are errors, and no float may be infinite or NaN (an infinite
    learning rate or temperature can only fail later, far from the file).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class NoParams(Params):
    """For components that take no parameters."""


@dataclass(frozen=True)
class _FromFile:
    """Marks a parameter as a path that a relative value reads from the experiment file's folder."""


FilePath = Annotated[str, _FromFile()]
"""A ``str`` parameter naming a file or folder. Given relative in an experiment file, the loader makes it
absolute from that file's folder (from the working directory when it comes from ``--set``), as it does
for ``models.<key>.checkpoint``, so a file runs the same from any working directory."""


def path_fields(model: type[BaseModel]) -> list[str]:
    """The names of ``model``'s top-level ``FilePath`` fields."""
    return [name for name, info in model.model_fields.items() if any(isinstance(m, _FromFile) for m in info.metadata)]
