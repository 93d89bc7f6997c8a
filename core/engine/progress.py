"""Progress: a bar on a terminal, one plain line per epoch elsewhere (CI, logs).

On a terminal the bar shows the current epoch and what the loop is doing
(training, evaluating, saving, logging); each finished epoch's figures are
printed above it as a labelled line, so the bar never shows stale numbers.
"""

from __future__ import annotations

import os
import sys
import time


def choose_mode(requested: str) -> str:
    if requested != "auto":
        return requested
    if os.environ.get("CI") or not sys.stderr.isatty():
        return "plain"
    return "bar"


def format_metrics(metrics: dict[str, float], keys=("train/loss", "val/accuracy", "test/accuracy")) -> str:
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)


class Progress:
    """Reports a stage's epochs and steps in the chosen mode."""

    def __init__(self, mode: str, stage: str, epochs: int, steps_per_epoch: int):
        self.mode, self.stage, self.epochs, self.steps = choose_mode(mode), stage, epochs, steps_per_epoch
        self._bar = None
        self._task = None
        self._epoch = 0
        self._t0 = time.perf_counter()
        if self.mode == "bar":
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                transient=True,
            )
            self._bar.start()

    def _description(self, phase: str) -> str:
        from rich.markup import escape

        return escape(f"[{self.stage}] epoch {self._epoch + 1}/{self.epochs} {phase}")

    def start_epoch(self, epoch: int) -> None:
        self._t0 = time.perf_counter()
        self._epoch = epoch
        if self._bar is not None:
            desc = self._description("training")
            if self._task is None:
                self._task = self._bar.add_task(desc, total=self.steps, info="")
            else:
                self._bar.reset(self._task, total=self.steps, description=desc, info="")

    def phase(self, name: str) -> None:
        """What the loop does now, after the steps (evaluating, saving checkpoint, logging)."""
        if self._bar is not None:
            self._bar.update(self._task, description=self._description(name))

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        line = format_metrics(metrics)
        took = time.perf_counter() - self._t0
        text = f"[{self.stage}] epoch {epoch + 1}/{self.epochs}  {line}  ({took:.1f}s)"
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)  # kept above the bar
        elif self.mode == "plain":
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
