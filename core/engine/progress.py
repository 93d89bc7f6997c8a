"""Progress: a bar on a terminal, one plain line per epoch elsewhere (CI, logs)."""

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
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                transient=False,
            )
            self._bar.start()

    def start_epoch(self, epoch: int) -> None:
        self._t0 = time.perf_counter()
        if self._bar is not None:
            desc = f"{self.stage} {epoch + 1}/{self.epochs}"
            if self._task is None:
                self._task = self._bar.add_task(desc, total=self.steps, info="")
            else:
                self._bar.reset(self._task, total=self.steps, description=desc)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        line = format_metrics(metrics)
        if self._bar is not None:
            self._bar.update(self._task, info=line)
        elif self.mode == "plain":
            took = time.perf_counter() - self._t0
            print(f"[{self.stage}] epoch {epoch + 1}/{self.epochs}  {line}  ({took:.1f}s)", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
