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

PRIMITIVE_BRANCHES = {"constrained-float", "float", "constrained-int", "int", "str", "constrained-str", "bool",
                      "none"}


def _is_branch(part: str) -> bool:
    """Whether a loc segment is a union branch pydantic names (a type, not a key of the file)."""
    return part in PRIMITIVE_BRANCHES or "[" in part or part[:1].isupper()


def _clean_location(doc: Document, loc: Sequence[str | int], keep_last: bool = False) -> list[str | int]:
    """Drop the segments pydantic adds (union tags, validator names) that the file lacks."""
    return _walk(doc, loc, keep_last)[0]


def _walk(doc: Document, loc: Sequence[str | int], keep_last: bool = False) -> tuple[list, str | None, tuple]:
    """(the location a person wrote, the first union branch label in ``loc``, the union's location)."""
    clean: list[str | int] = []
    branch, point = None, ()
    node: Any = doc.data
    for i, part in enumerate(loc):
        last = keep_last and i == len(loc) - 1
        if isinstance(node, dict) and isinstance(part, str) and part not in node and not last:
            if part in (node.get("kind"), node.get("name")):
                continue  # a discriminator tag, not a key in the file
            if _is_branch(part):
                if branch is None:
                    branch, point = part, tuple(clean)
                continue
        elif isinstance(node, list) and not isinstance(part, int):
            if branch is None and _is_branch(part) and not last:
                branch, point = part, tuple(clean)
            continue
        elif not isinstance(node, dict | list) and isinstance(part, str) and i > 0 and not last:
            if branch is None:  # a scalar has no keys: a union branch's label
                branch, point = part, tuple(clean)
            continue
        clean.append(part)
        if isinstance(node, dict):
            node = node.get(part if not isinstance(part, int) else str(part))
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return clean, branch, point


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
    loc = _clean_location(doc, err["loc"], keep_last=err["type"] == "extra_forbidden")
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


# --- a value that fits none of a field's forms: said once ---------------------------------------------------

def schema_problems(doc: Document, errors: list[dict], registry: Registry, model: type[BaseModel]) -> list[Problem]:
    """Every pydantic error as a ``Problem``; the branches of a union that a value fits none of become one
    problem that says what the field accepts (not one line per branch, named by pydantic's branch labels)."""
    branches: dict[tuple, list[tuple[str, dict, list]]] = {}
    plain: list[dict] = []
    for err in errors:
        clean, label, point = _walk(doc, err["loc"], keep_last=err["type"] == "extra_forbidden")
        if label is None or err["type"].startswith("union_tag"):
            plain.append(err)
        else:
            branches.setdefault(point, []).append((label, err, clean))
    problems = [schema_problem(doc, err, registry, model) for err in plain]
    for point, found in branches.items():
        deeper = [(label, err) for label, err, clean in found if len(clean) > len(point)]
        if deeper or len({label for label, _, _ in found}) == 1:  # the value's shape chose a branch: its errors
            problems += [schema_problem(doc, err, registry, model) for _, err in (deeper or
                                                                                  [(lb, e) for lb, e, _ in found])]
            continue
        value = found[0][1].get("input")
        shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value) \
            if isinstance(value, str) else str(value)
        forms = list(dict.fromkeys(_form(label) for label, _, _ in found))
        source, line, col = doc.locate(list(point))
        problems.append(Problem(source, dotted(list(point)), f"{shown} is none of what it accepts: "
                                + ", or ".join(forms), line, col))
    return problems


def _form(label: str) -> str:
    """A union branch's label in words: ``constrained-float`` is a number, ``WeightSchedule`` a mapping of
    its fields."""
    words = {"constrained-float": "a finite number", "float": "a finite number", "constrained-int": "a whole number",
             "int": "a whole number", "str": "a string", "constrained-str": "a string", "bool": "true or false",
             "none": "null"}
    if label in words:
        return words[label]
    if label.startswith("literal["):
        return "one of " + label[len("literal["):-1]
    if label.startswith(("list[", "tuple[")):
        return "a list"
    if label.startswith("dict["):
        return "a mapping"
    found = _params_class(label)
    if found is not None:
        return f"a mapping {{{', '.join(found.model_fields)}}} ({found.__name__})"
    return label


def _params_class(name: str) -> type[BaseModel] | None:
    from ..params import Params

    stack = [Params]
    while stack:
        cls = stack.pop()
        if cls.__name__ == name:
            return cls
        stack.extend(cls.__subclasses__())
    return None
