"""Reading experiment files as data: YAML or TOML, never executing anything.

YAML is composed once with ``yaml.SafeLoader`` (no object tags; the node tree
gives line numbers) and constructed from that tree; TOML goes through
``tomllib``. A file is bounded before anything reads it deeply: at most
``MAX_FILE_BYTES``, and at most ``MAX_NODES`` values once YAML aliases are
expanded (a "billion laughs" file is a few lines that expand to billions of
values, which validation, hashing or logging would then walk). Overrides from
``--set`` are applied to the raw data before validation.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, Problem
from .toml_lines import key_positions

MAX_FILE_BYTES = 1 << 20
"""An experiment file larger than this (1 MiB) is refused: real ones are a few KiB."""

MAX_NODES = 100_000
"""Values in a YAML file once its aliases are expanded; beyond this it is refused."""


@dataclass
class Document:
    """An experiment file's raw data, with a way back to its lines."""

    source: str
    data: dict[str, Any]
    root: yaml.Node | None = None  # YAML node tree, for line numbers
    overridden: list[tuple[str | int, ...]] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # the --set items as given, for run names
    positions: dict[tuple, tuple[int, int]] | None = None  # TOML: key path -> (line, column)

    def locate(self, path: Sequence[str | int]) -> tuple[str, int | None, int | None]:
        """The source and 1-based line/column of the deepest node on ``path``."""
        for over in self.overridden:
            if tuple(path[: len(over)]) == over:
                return "--set", None, None
        if self.positions is not None:
            for depth in range(len(path), 0, -1):
                if tuple(path[:depth]) in self.positions:
                    return (self.source, *self.positions[tuple(path[:depth])])
            return self.source, None, None
        node, mark = self.root, None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
                if match is None:
                    break
                mark, node = match[0].start_mark, match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    break
                node = node.value[part]
                mark = node.start_mark
            else:
                break
        if mark is None and self.root is not None:
            mark = self.root.start_mark
        if mark is None:
            return self.source, None, None
        return self.source, mark.line + 1, mark.column + 1


def read_document(path: str | Path) -> Document:
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError([Problem(source, "", "no such file")])
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError([Problem(source, "", f"the file is {size:,} bytes; an experiment file may have at most "
                                   f"{MAX_FILE_BYTES:,}")])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(source, "", f"not UTF-8 text (byte {exc.start})")]) from None
    if path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            where = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
            line, col = (int(where.group(1)), int(where.group(2))) if where else (None, None)
            message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
            raise ConfigError([Problem(source, "", f"invalid TOML: {message}", line, col)]) from None
        doc = Document(source, data, positions=key_positions(text))
    else:
        try:
            loader = yaml.SafeLoader(text)
            try:
                root = loader.get_single_node()
                _check_expanded_size(source, root)
                _check_duplicate_keys(source, root)
                data = loader.construct_document(root) if root is not None else None
            finally:
                loader.dispose()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else None
            col = mark.column + 1 if mark else None
            msg = " ".join(str(p) for p in (exc.context, exc.problem) if p)
            raise ConfigError([Problem(source, "", f"invalid YAML: {msg}", line, col)]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([Problem(source, "", f"invalid YAML: {exc}")]) from None
        except RecursionError:
            raise ConfigError([Problem(source, "", "invalid YAML: nested too deeply")]) from None
        doc = Document(source, data, root)
    if not isinstance(doc.data, dict):
        raise ConfigError([Problem(source, "", "the file must hold a mapping (key: value) at its top")])
    return doc


def _check_duplicate_keys(source: str, root: yaml.Node | None) -> None:
    """Refuse a mapping that gives a key twice (YAML itself keeps the last one silently, so a setting
    written twice would be half ignored); every duplicate is reported, located at its second use."""
    problems, seen = [], set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:  # an alias: the same node, checked once
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, yaml.Node] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in first:
                        line = first[key.value].start_mark.line + 1
                        problems.append(Problem(source, "", f"duplicate key '{key.value}' (first given on line "
                                                f"{line}; YAML would keep only the last)",
                                                key.start_mark.line + 1, key.start_mark.column + 1))
                    else:
                        first[key.value] = key
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.line or 0, p.column or 0)))


def _check_expanded_size(source: str, root: yaml.Node | None) -> None:
    """Refuse a node tree that holds more than ``MAX_NODES`` values with its aliases expanded.

    An alias is the same node object met again, so the expanded size of each
    node is computed once (memoised by identity): linear in the file's size.
    """
    sizes: dict[int, int] = {}

    def expanded(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        sizes[key] = MAX_NODES + 1  # a node inside itself (a recursive alias) is over any bound
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(expanded(k) + expanded(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(expanded(v) for v in node.value)
        else:
            total = 1
        sizes[key] = min(total, MAX_NODES + 1)
        if total > MAX_NODES:
            mark = node.start_mark
            what = "the value" if source == "--set" else "the file"
            raise ConfigError([Problem(source, "", f"{what} expands to more than {MAX_NODES:,} values "
                                       "(YAML aliases repeated inside each other?)", mark.line + 1,
                                       mark.column + 1)])
        return sizes[key]

    if root is not None:
        expanded(root)


def parse_path(text: str) -> tuple[str | int, ...]:
    """'stages[1].losses.0.params.temperature' -> ('stages', 1, 'losses', 0, 'params', 'temperature')."""
    parts: list[str | int] = []
    for chunk in text.replace("]", "").replace("[", ".").split("."):
        if chunk == "":
            raise ValueError(f"empty segment in path '{text}'")
        parts.append(int(chunk) if chunk.lstrip("-").isdigit() else chunk)
    return tuple(parts)


def apply_overrides(doc: Document, overrides: Sequence[str]) -> None:
    """Apply ``path=value`` overrides in place; values are parsed as YAML scalars/lists."""
    problems = []
    for item in overrides:
        key, sep, raw_value = item.partition("=")
        if not sep or not key.strip():
            problems.append(Problem("--set", "", f"'{item}': expected PATH=VALUE"))
            continue
        try:
            path = parse_path(key.strip())
            value = _override_value(raw_value) if raw_value.strip() else ""
            set_path(doc.data, path, value)
        except yaml.MarkedYAMLError as exc:  # one line, not PyYAML's excerpt of the value
            problems.append(Problem("--set", key.strip(), " ".join(str(p) for p in (exc.context, exc.problem) if p)))
            continue
        except (ValueError, yaml.YAMLError) as exc:
            problems.append(Problem("--set", key.strip(), str(exc)))
            continue
        except ConfigError as exc:  # an override's value over the bounds a file has
            problems.extend(Problem("--set", key.strip(), p.message) for p in exc.problems)
            continue
        doc.overridden.append(path)
        doc.overrides.append(f"{key.strip()}={raw_value.strip()}")
    if problems:
        raise ConfigError(problems)


def _override_value(text: str) -> Any:
    """A ``--set`` value, read as YAML under the same bounds as a file (aliases, size, duplicate keys)."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        _check_expanded_size("--set", root)
        _check_duplicate_keys("--set", root)
        return loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()


def set_path(data: Any, path: Sequence[str | int], value: Any) -> None:
    node = data
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        where = ".".join(map(str, path[: depth + 1]))
        if isinstance(node, list):
            if not isinstance(part, int):
                raise ValueError(f"'{where}': expected a list index")
            if not -len(node) <= part < len(node):
                raise ValueError(f"'{where}': index out of range (the list has {len(node)} items)")
        elif isinstance(node, dict):
            if isinstance(part, int):
                part = str(part)
            if not last and part not in node:
                node[part] = {}
        else:
            raise ValueError(f"'{where}': cannot descend into a {type(node).__name__}")
        if last:
            node[part] = value
        else:
            node = node[part]
