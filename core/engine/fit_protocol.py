"""What passes between a method's step, the training loop and whoever records the run: the typed contract."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StepInfo:
    """Where a training step stands: handed to a step that takes it, ``step(x, y, info)``."""

    epoch: int  # 0-based epoch of this fit
    step: int  # 1-based step over this fit (epoch * steps per epoch + the step in the epoch)


class Recorder(Protocol):
    """Where the loop's records go, in one object (``StageContext.fit`` passes the stage's):

    ``epoch_end(epoch, metrics)`` after each epoch's checkpoint is on disk, returning why to stop early (or
    None); ``step_metrics(step, metrics)`` every ``log_every_steps`` steps on rank 0; ``flush()`` before each
    checkpoint, so that what was logged is durable before the checkpoint says it ran; ``relog(epoch,
    metrics)`` for each epoch a resumed checkpoint holds (a store that keeps what it has ignores the rest).
    """

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> str | None: ...

    def step_metrics(self, step: int, metrics: dict[str, float]) -> None: ...

    def flush(self) -> None: ...

    def relog(self, epoch: int, metrics: dict[str, float]) -> None: ...


class NoRecorder:
    """A recorder that keeps nothing but the last epoch's metrics (the bench's)."""

    def __init__(self):
        self.last: dict[str, float] = {}

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> str | None:
        self.last = dict(metrics)
        return None

    def step_metrics(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def flush(self) -> None:
        pass

    def relog(self, epoch: int, metrics: dict[str, float]) -> None:
        pass


def takes_info(step: Callable) -> bool:
    """Whether a step is written as ``step(x, y, info)`` (the typed form) rather than ``step(x, y)``."""
    try:
        parameters = inspect.signature(step).parameters.values()
    except (TypeError, ValueError):
        return False
    parameters = list(parameters)
    required = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                and p.default is p.empty]  # not ``def step(x, y, model=model)``: a bound value, no third input
    return len(required) >= 3 or any(p.name == "info" for p in parameters) or \
        any(p.kind is p.VAR_POSITIONAL for p in parameters)
