"""What passes between a method's step, the training loop and whoever records the run: the typed contract."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch


@dataclass(frozen=True)
class StepInfo:
    """Where a training step stands: handed to a step that takes it, ``step(x, y, info)``."""

    epoch: int  # 0-based epoch of this fit
    step: int  # 1-based step over this fit (epoch * steps per epoch + the step in the epoch)


class Batch(NamedTuple):
    """One training batch, as a step written as ``step(batch, info)`` gets it."""

    inputs: torch.Tensor  # the model's input, in the data's form (normalised, augmented)
    targets: torch.Tensor  # labels; row numbers for a set whose targets are rows (a teacher cache's)


class Step(Protocol):
    """A training step as one object: the typed form of the contract between a method and the loop.

    ``step(batch, info)`` gets a ``Batch`` and a ``StepInfo`` and returns ``(loss, metrics)``: the loss to
    minimise (or, for a ``manual`` task, to report) and extra per-batch tensors (averaged over the epoch,
    logged under ``train/``). Two optional methods are its lifecycle: ``epoch_start(epoch)`` before an
    epoch's first step (0-based; also the epoch a resumed fit starts in) and ``fit_end()`` after the last
    epoch, before the fit's result is recorded (and again on a resume that finds the last epoch's
    checkpoint, so that a final measurement logged there survives any kill). ``TrainTask(step=obj)``
    takes them from the object; ``step(x, y)`` and ``step(x, y, info)`` functions with ``on_epoch`` and
    ``on_end`` work as before.
    """

    def __call__(self, batch: Batch, info: StepInfo) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


class BatchStep:
    """A ``step(batch, info)`` called as the loop calls steps, ``step(x, y, info)``."""

    def __init__(self, step: Callable):
        self.typed = step

    def __call__(self, x: torch.Tensor, y: torch.Tensor, info: StepInfo):
        return self.typed(Batch(x, y), info)


def takes_batch(step: Callable) -> bool:
    """Whether a step is written as ``step(batch, info)``: two required positional parameters, the second
    named ``info``."""
    try:
        parameters = list(inspect.signature(step).parameters.values())
    except (TypeError, ValueError):
        return False
    required = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                and p.default is p.empty]
    return len(required) == 2 and required[1].name == "info"


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
