"""Built-in callbacks: lifecycle-hook plugins an experiment file turns on in `callbacks:`.

``early_stopping`` ends a training loop whose validation metric stopped
improving: the stage keeps its best epoch's weights (``keep: best``), ends
FINISHED with a ``mentor.stopped_early`` tag saying why, and the next stage
runs. It is an ordinary callback, registered like a third-party one, and it
stops through ``ctx.stop_stage``, the public way.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mentor import Params, hookimpl


class EarlyStoppingParams(Params):
    metric: str = Field(default="val/accuracy", description="the metric watched (evaluated epochs only)")
    mode: Literal["max", "min"] = Field(default="max", description="max: higher is better; min: lower")
    patience: int = Field(default=10, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(default=0.0, ge=0, description="the smallest change that counts as an improvement")
    stages: list[str] | None = Field(default=None, description="the stages it watches; default: every stage")


class EarlyStopping:
    """Stop a loop after ``patience`` evaluations of ``metric`` without an improvement of ``min_delta``.

    Each training loop (a stage, or a phase of one: pre-train, fine-tune,
    round) is watched afresh. The count lives in memory: a resumed run starts
    counting again from its next evaluation.
    """

    def __init__(self, metric: str = "val/accuracy", mode: str = "max", patience: int = 10, min_delta: float = 0.0,
                 stages: list[str] | None = None):
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.stages = set(stages) if stages is not None else None
        self._watch: tuple[str, int] | None = None  # (stage, last epoch seen): a new loop starts at a lower epoch
        self.best, self.best_epoch, self.waited = None, None, 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta

    @hookimpl
    def on_epoch_end(self, stage, ctx, epoch, metrics):
        if self.stages is not None and stage.name not in self.stages:
            return
        if self._watch is None or self._watch[0] != stage.name or epoch <= self._watch[1]:
            self.best, self.best_epoch, self.waited = None, None, 0  # another loop
        self._watch = (stage.name, epoch)
        value = metrics.get(self.metric)
        if value is None:
            return  # not an evaluated epoch
        if self._improved(value):
            self.best, self.best_epoch, self.waited = value, epoch, 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            ctx.stop_stage(f"early_stopping: {self.metric} did not improve by more than {self.min_delta} in "
                           f"{self.patience} evaluations (best {self.best:.4f} at epoch {self.best_epoch + 1})")


@hookimpl
def register_callbacks(register):
    register("early_stopping", EarlyStopping, params=EarlyStoppingParams,
             description="end a stage's training when a validation metric stops improving; the best epoch is "
             "kept and the run goes on")
