"""Pass 1 of validation: pydantic's errors on an experiment file, mapped back to the file.

Each error is given the location a person wrote (no union tags or validator
names), a did-you-mean for unknown names and keys, and the validator's own
words without pydantic's "Value error, " prefix.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Sequence
from typing import Any, Union

from pydantic import BaseModel

from ..registry import Registry, unknown_name_message
from .document import Document
from .errors import Problem, dotted


def _clean_location(doc: Document, loc: Sequence[str | int]) -> list[str | int]:
    """Drop the segments pydantic adds (union tags, validator names) that the file lacks."""
    clean: list[str | int] = []
    node: Any = doc.data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part not in node:
            if part in (node.get("kind"), node.get("name")) or "[" in part:
                continue  # a discriminator tag or validator label, not a key in the file
        elif isinstance(node, list) and not isinstance(part, int):
            continue
        clean.append(part)
        if isinstance(node, dict):
            node = node.get(part if not isinstance(part, int) else str(part))
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return clean


def _plain(err: dict) -> str:
    """pydantic's message without its "Value error, " prefix (a validator's own words stand alone)."""
    message = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def params_message(err: dict, params: type[BaseModel]) -> str:
    """A plugin's params error; an unknown key gets a did-you-mean from the params model's fields."""
    if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
        return unknown_name_message("parameter", str(err["loc"][0]), list(params.model_fields))
    return _plain(err)


def schema_problem(doc: Document, err: dict, registry: Registry, model: type[BaseModel]) -> Problem:
    loc = _clean_location(doc, err["loc"])
    message = _plain(err)
    in_stages = bool(loc) and loc[0] == "stages"
    if err["type"] == "union_tag_invalid" and in_stages:
        message = unknown_name_message("stage kind", err["ctx"]["tag"], registry.names("method"))
        loc = (*loc, "kind")  # the wrong value is the kind's, not the stage's
    elif err["type"] == "union_tag_invalid":  # e.g. search.pruner.name
        tags = re.findall(r"'([^']*)'", err["ctx"]["expected_tags"])
        message = unknown_name_message(str(loc[-1]) if loc else "name", err["ctx"]["tag"], tags)
    elif err["type"] == "union_tag_not_found" and in_stages:
        message = f"a stage needs a 'kind' (one of: {', '.join(registry.names('method'))})"
    elif err["type"] == "literal_error" and loc and loc[-1] == "kind":
        message = unknown_name_message("stage kind", err["input"], registry.names("method"))
    elif err["type"] == "extra_forbidden" and loc:
        allowed = _fields_at(model, loc[:-1], doc.data)
        message = unknown_name_message("field", loc[-1], allowed) if allowed else "unknown field"
    source, line, col = doc.locate(loc)
    return Problem(source, dotted(loc), message, line, col)


def _fields_at(model: type[BaseModel], path: Sequence[str | int], data: Any) -> list[str]:
    """The field names allowed at ``path`` (for a did-you-mean on unknown keys)."""
    tp: Any = model
    node = data
    for part in path:
        tp = _concrete(tp, node)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if part not in tp.model_fields:
                return []
            tp = tp.model_fields[part].annotation
        elif typing.get_origin(tp) in (list, tuple):
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return []
        node = node[part] if isinstance(node, (dict, list)) and _has(node, part) else None
    tp = _concrete(tp, node)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _has(node: dict | list, part: str | int) -> bool:
    return part in node if isinstance(node, dict) else isinstance(part, int) and part < len(node)


def _concrete(tp: Any, node: Any) -> Any:
    """Strip Annotated/Optional; pick a union member by the node's ``kind``."""
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if typing.get_origin(tp) in (Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
            for tag in ("kind", "name"):  # the discriminators in use (stages, pruners)
                value = node.get(tag) if isinstance(node, dict) else None
                for member in members:
                    field = getattr(member, "model_fields", {}).get(tag)
                    if value is not None and field is not None and value in typing.get_args(field.annotation):
                        return member
            return None
        return tp
