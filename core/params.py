"""The one strict base model: every parameter and config model in mentor subclasses it."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, model_validator


def _numeric(annotation: Any) -> bool:
    """Whether a field holds an int or a float (optional or not)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        return len(kinds) == 1 and _numeric(kinds[0])
    return annotation in (int, float)


class _Boolean:
    """A true/false given for a number: fails the field's own validation, located at the field."""

    def __init__(self, value: bool):
        self.value = value

    def __repr__(self) -> str:
        return str(self.value).lower()


class Params(BaseModel):
    """Base of a component's parameter model and of every config section.

    Unknown keys are errors, no float may be infinite or NaN (an infinite
    learning rate or temperature can only fail later, far from the file), and a
    number refuses true/false (YAML reads ``yes`` and ``on`` as true, which
    would otherwise pass as 1).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            fields = cls.model_fields
            bad = {k: _Boolean(v) for k, v in data.items()
                   if isinstance(v, bool) and k in fields and _numeric(fields[k].annotation)}
            if bad:
                data = {**data, **bad}
        return data


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
