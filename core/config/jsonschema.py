"""JSON Schema of experiment files, with every registered plugin's params inside.

pydantic describes the fixed structure; each ``params`` block is typed only
at load time, so here every component spec becomes a ``oneOf`` with one
branch per registered component, its ``params`` given by that component's
model. Editors that read JSON Schema then validate and complete as you type.
"""

from __future__ import annotations

import copy

from ..registry import Registry
from .loader import experiment_model
from .schema import ComponentSpec, DataConfig, LossSpec, ModelSpec, SelectionSpec, UnlabeledSpec

SPECS: list[type[ComponentSpec]] = [ModelSpec, LossSpec, SelectionSpec, DataConfig, UnlabeledSpec]


def experiment_schema(registry: Registry) -> dict:
    schema = experiment_model(registry).model_json_schema()
    defs = schema.setdefault("$defs", {})
    for spec in SPECS:
        base = defs.get(spec.__name__)
        if base is None:
            continue
        branches = []
        for name in registry.names(spec.kind):
            component = registry.get(spec.kind, name)
            params = component.params.model_json_schema(ref_template="#/$defs/{model}")
            defs.update(params.pop("$defs", {}))
            branch = copy.deepcopy(base)
            branch["title"] = f"{spec.kind.replace('_', ' ')}: {name}"
            branch["description"] = component.description
            branch["properties"][spec.name_field] = {"const": name}
            branch["properties"]["params"] = params
            branches.append(branch)
        if branches:
            defs[spec.__name__] = {"oneOf": branches, "title": base.get("title", spec.__name__)}
    return schema
