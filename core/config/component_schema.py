"""A plugin component chosen in an experiment file by name, with its ``params``: the base of every such entry."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from ..params import Params


class ComponentSpec(Params):
    """A plugin component chosen by ``name`` with its ``params``.

    ``params`` stays a mapping here; the loader validates it with the
    component's own model and stores the result (defaults filled in).
    """

    kind: ClassVar[str]
    name_field: ClassVar[str] = "name"

    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def component_name(self) -> str:
        return getattr(self, self.name_field)
