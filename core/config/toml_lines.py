"""Where each key of a TOML file is, for errors located like YAML's (``tomllib`` gives no positions).

A line scanner, enough for experiment files: ``[table]`` and ``[[array of tables]]`` headers
(counting the array's entries), ``key = value`` and dotted ``a.b = value`` lines, quoted keys.
A value spanning several lines (an inline table, an array) is located at its key; an error
deeper inside it points there, as the deepest known part of its path.
"""

from __future__ import annotations

import re

_BARE = r"[A-Za-z0-9_-]+"
_KEY = rf"(?:{_BARE}|\"(?:[^\"\\]|\\.)*\"|'[^']*')"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?\s*(#.*)?$")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=")


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(m.strip("\"'") for m in re.findall(_KEY, dotted))


def key_positions(text: str) -> dict[tuple, tuple[int, int]]:
    """Path (as in the parsed data, list entries as ints) -> 1-based (line, column) of its key."""
    positions: dict[tuple, tuple[int, int]] = {}
    counts: dict[tuple, int] = {}
    table: tuple = ()
    in_multiline = None  # the closing quotes of a multi-line string being skipped
    for number, line in enumerate(text.splitlines(), 1):
        if in_multiline:
            if in_multiline in line:
                in_multiline = None
            continue
        header = _HEADER.match(line)
        if header:
            names = _parts(header.group(2))
            path: tuple = ()
            for depth, name in enumerate(names):  # [a.b] under [[a]] is a table of a's last entry
                path = (*path, name)
                if path in counts and depth < len(names) - 1:
                    path = (*path, counts[path] - 1)
            if header.group(1) == "[[":
                index = counts.get(path, 0)
                counts[path] = index + 1
                positions.setdefault(path, (number, line.index("[") + 1))
                path = (*path, index)
            table = path
            positions[table] = (number, line.index("[") + 1)
            continue
        assign = _ASSIGN.match(line)
        if assign:
            key = _parts(assign.group(1))
            col = len(line) - len(line.lstrip()) + 1
            for depth in range(1, len(key) + 1):
                positions.setdefault((*table, *key[:depth]), (number, col))
            rest = line[assign.end():]
            for quotes in ('"""', "'''"):
                if rest.count(quotes) == 1:
                    in_multiline = quotes
    return positions
