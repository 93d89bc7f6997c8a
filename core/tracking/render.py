"""A board as text: an aligned plain table (rich, no colour), CSV or JSON."""


from __future__ import annotations

import datetime as dt
import io
import math
from typing import Any

import polars as pl

_FORMATS = ("table", "csv", "json")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _render_table(df: pl.DataFrame) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    if not df.columns:
        return ""
    cells = [[_cell(v) for v in row] for row in df.iter_rows()]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in
              enumerate(df.columns)]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name, dtype in zip(df.columns, df.dtypes, strict=True):
        # (overflow="ignore" would break right-justification; the console is wide enough)
        table.add_column(name, justify="right" if dtype.is_numeric() else "left", no_wrap=True)
    for row in cells:
        table.add_row(*row)
    width = sum(widths) + 3 * len(widths) + 4
    console = Console(file=io.StringIO(), record=True, width=max(width, 40), color_system=None,
                      force_terminal=False, force_jupyter=False, force_interactive=False)
    console.print(table)
    text = console.export_text(styles=False)
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n") + "\n"


def fit_columns(df: pl.DataFrame, width: int, keep: int = 1) -> tuple[pl.DataFrame, list[str]]:
    """The board without its rightmost columns (never the first ``keep``) until its table fits in ``width``
    characters; returns it and the names of the columns left out."""
    hidden: list[str] = []
    while len(df.columns) > keep:
        longest = max((len(line) for line in _render_table(df).splitlines()), default=0)
        if longest <= width:
            break
        hidden.insert(0, df.columns[-1])
        df = df.drop(df.columns[-1])
    return df, hidden


def render(df: pl.DataFrame, fmt: str = "table") -> str:
    """Text for a table: ``"table"`` (aligned plain text, floats to 4 decimals, all rows),
    ``"csv"`` (full precision) or ``"json"`` (a list of row objects)."""
    if fmt == "table":
        return _render_table(df)
    if fmt == "csv":
        return df.write_csv()
    if fmt == "json":
        return df.write_json()
    raise ValueError(f"unknown format {fmt!r}; expected one of {_FORMATS}")
