"""Config errors that point at the file, line and dotted location."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an experiment file."""

    source: str  # the file's path, or "--set" for a command-line override
    path: str  # dotted location such as stages[1].losses[0].params.temperature
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """An experiment file (or an override) is invalid; holds every problem found."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def dotted(path: Sequence[str | int]) -> str:
    """('stages', 1, 'losses', 0, 'params') -> 'stages[1].losses[0].params'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def located_error(experiment, path: Sequence[str | int], message: str) -> ConfigError:
    """An error about a field of a loaded experiment found after validation (at run time), located like
    ``mentor validate``'s: file:line:col (when the file is known) and the dotted path."""
    doc = getattr(experiment, "_document", None)
    source, line, col = doc.locate(path) if doc is not None else ("<config>", None, None)
    return ConfigError([Problem(source, dotted(path), message, line, col)])
