"""Bench mode: a stage's method runs as in a real run, up to the loop, and is measured there.

Why a context and not a copy of each method: the bench must time the step a
real run takes. So every method runs its own code through the pipeline's
``StageContext``, with three differences that make it a measurement instead
of a run:

- ``fit`` measures the task it is handed (``measure.measure_task``) and
  raises ``Measured`` with the figures, which ends the method there: nothing
  after the first fit (exports, fine-tunes, further rounds) runs;
- models that earlier stages would have trained (a teacher, ``init:``) are
  freshly initialised: a step's time does not depend on the weights, and a
  bench needs no earlier stage to have run;
- nothing is recorded: the tracker is a no-op (no MLflow run is created) and
  the stage folders live in a temporary directory;
- a teacher cache (``teacher_cache:``) is built in that temporary directory,
  over the rows the bench's steps use only: its step reads stored outputs as
  a run's does, without paying for views of images it never reaches (the
  build is reported apart, not timed as steps).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config.loader import teacher_model_key, trained_model_key
from ..config.schema import TrainingConfig
from ..context import RunState, StageContext
from ..engine.loop import TrainTask
from ..engine.runtime import choose_runtime
from ..pipeline import ExperimentRunner
from ..plugins import Plugins
from ..tracking.tracker import NullTracker


class Measured(BaseException):  # noqa: N818 - a control-flow signal, like StopIteration
    """Raised by ``BenchContext.fit`` to end the method once its step is measured.

    A ``BaseException`` so that a method's ``except Exception`` cannot swallow it.
    """

    def __init__(self, figures: dict[str, Any]):
        super().__init__("stage measured")
        self.figures = figures


class BenchError(Exception):
    """The bench cannot measure what it was asked to (unknown stage, a method that never fits)."""


def bench_state(experiment, plugins: Plugins, workdir: Path) -> RunState:
    """The run state a real run would build (data, runtime, plugins), with a no-op tracker and a scratch folder."""
    runner = ExperimentRunner(experiment, plugins)
    return RunState(experiment, runner.load_data(), choose_runtime(experiment.engine), plugins.registry,
                    plugins.hook, NullTracker(experiment.tracking.experiment or experiment.name), Path(workdir))


MeasureFn = Callable[["BenchContext", TrainTask, TrainingConfig], dict[str, Any]]


class BenchContext(StageContext):
    """A ``StageContext`` whose ``fit`` measures the task instead of training it (see the module docstring)."""

    def __init__(self, state: RunState, index: int, measure: MeasureFn, rows: int | None = None):
        super().__init__(state, index)
        self.run_id = "bench"
        self._measure = measure
        self._rows = rows  # the training rows the bench's steps reach
        self.cache: dict[str, Any] | None = None

    def cache_root(self) -> Path:
        return self.state.run_dir / "cache"

    def cached_teacher(self, teacher, config, *, data, nodes=(), cfg=None, label=""):
        """The run's cache, over the rows the bench reaches only (see the module docstring)."""
        if self._rows is not None and self._rows < len(data):
            data = data.subset(torch.arange(self._rows))
        cache = super().cached_teacher(teacher, config, data=data, nodes=nodes, cfg=cfg, label=label)
        if cache is not None:
            record = cache.meta["record"]
            self.cache = {"views": record["views"], "images": record["data"]["count"],
                          "build_seconds": cache.meta.get("built_seconds"), "store": record["store"]}
        return cache

    def build_model(self, key: str, init: str | None = None) -> nn.Module:
        """A fresh ``models[key]``; ``init`` is ignored (no earlier stage has trained anything)."""
        return super().build_model(key)

    def trained_model(self, stage_name: str) -> nn.Module:
        """A freshly initialised model of the architecture stage ``stage_name`` trains."""
        stage = next((s for s in self.experiment.stages if s.name == stage_name), None)
        key = trained_model_key(stage) if stage is not None else None
        if key is None:
            raise BenchError(f"stage '{stage_name}' trains no model for stage '{self.stage.name}' to use")
        return self.build_model(key)

    def teacher(self, ref: str, field: str = "teacher") -> nn.Module:
        """A fresh model of the architecture an earlier stage trains, or a models entry (its weights loaded as
        in a run: a ``uri`` alone is the only way to its architecture)."""
        key = teacher_model_key(self.experiment, ref)
        if key is None:
            raise BenchError(f"'{ref}' names no stage or model for stage '{self.stage.name}' to use")
        return self.build_model(key).to(self.device).eval()

    def fit(self, task: TrainTask, model_key: str, cfg: TrainingConfig | None = None, **_) -> None:
        raise Measured(self._measure(self, task, cfg or self.stage))
