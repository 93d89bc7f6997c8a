"""One trial: sample the space, build the experiment, run it under the trial's MLflow run.

Pruning listens to the experiment through the ``on_epoch_end`` hook: a small
in-process plugin, registered with the plugin manager for the trial only,
reports the per-epoch value of the searched metric (``val/accuracy`` for
``student/best.val.accuracy``) of the metric's stage to Optuna and raises
``TrialPruned`` when the pruner says so. ``TrialPruned`` is a
``mentor.StopRun``, so the experiment's runs end KILLED, like the trial's.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import optuna

from ..config.document import Document
from ..config.loader import validate_document
from ..config.search import SearchConfig
from ..context_recording import StopRun
from ..hookspecs import hookimpl
from ..pipeline import ExperimentRunner
from ..plugins import Plugins
from . import space
from .runs import SweepRuns

#: Trial user attributes: who runs it (to spot dead local workers) and its resolved config.
HOST, PID, CONFIG = "mentor.host", "mentor.pid", "mentor.config"


class TrialPruned(StopRun, optuna.TrialPruned):
    """Optuna's pruning signal, which the pipeline also knows as a deliberate stop."""


class PruningReporter:
    """Feeds one stage's per-epoch metric to the trial and stops it when the pruner says so.

    Steps count the evaluations the trial made so far (across phases and seeds), so
    every trial reports the same step numbers at the same point of its schedule.
    """

    def __init__(self, trial: optuna.Trial, stage: str, metric: str):
        self.trial, self.stage, self.metric = trial, stage, metric
        self.step = 0

    @hookimpl
    def on_epoch_end(self, stage, ctx, epoch, metrics):
        if stage.name != self.stage or self.metric not in metrics:
            return  # another stage, or an epoch without evaluation (eval_every)
        self.trial.report(float(metrics[self.metric]), self.step)
        self.step += 1
        if self.trial.should_prune():
            raise TrialPruned(f"pruned at step {self.step - 1} ({self.metric} = {metrics[self.metric]:.4f})")


@dataclass
class Objective:
    """What Optuna calls for each trial: returns the trial's value (mean over seeds)."""

    base: dict[str, Any]  # the resolved experiment config, without its search block
    search: SearchConfig
    plugins: Plugins
    runs: SweepRuns

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(HOST, socket.gethostname())
        trial.set_user_attr(PID, os.getpid())
        values = space.sample(trial, self.search.space)
        config = space.apply(self.base, values)
        trial.set_user_attr(CONFIG, config)
        run_id = self.runs.start_trial(trial.number, values)
        reporter = PruningReporter(trial, self.search.stage, self.search.epoch_metric)
        self.plugins.manager.register(reporter)
        scores: dict[int, float] = {}
        try:
            experiment = validate_document(Document(f"trial {trial.number}", config), self.plugins.registry)
            for seed in self.search.seeds or [experiment.seed]:
                scores[seed] = self._run(experiment.model_copy(update={"seed": seed}), trial, run_id)
        except optuna.TrialPruned:
            self.runs.end_trial(run_id, "PRUNED", self._metrics(scores, partial=True))
            raise
        except KeyboardInterrupt:
            self.runs.end_trial(run_id, "FAIL", self._metrics(scores, partial=True), status="KILLED")
            raise
        except BaseException:
            self.runs.end_trial(run_id, "FAIL", self._metrics(scores, partial=True))
            raise
        finally:
            self.plugins.manager.unregister(reporter)
        value = sum(scores.values()) / len(scores)
        self.runs.end_trial(run_id, "COMPLETE", self._metrics(scores))
        return value

    def _run(self, experiment, trial: optuna.Trial, run_id: str) -> float:
        tags = {"mentor.study": self.runs.study, "mentor.trial": str(trial.number), "mentor.seed": str(experiment.seed)}
        results = ExperimentRunner(experiment, self.plugins, parent_run_id=run_id, tags=tags).run()
        metrics = results[self.search.stage].metrics
        if self.search.summary_key not in metrics:
            raise KeyError(f"stage '{self.search.stage}' reported no '{self.search.summary_key}' "
                           f"(it reported: {', '.join(sorted(metrics))})")
        return float(metrics[self.search.summary_key])

    def _metrics(self, scores: dict[int, float], partial: bool = False) -> dict[str, float]:
        """The trial run's metrics: ``value`` (the objective), under the metric's name too,
        and per seed when there are several."""
        if not scores or partial:
            return {f"seed_{seed}/{self.search.metric}": v for seed, v in scores.items()}
        value = sum(scores.values()) / len(scores)
        out = {"value": value, self.search.metric: value}
        if len(scores) > 1:
            out.update({f"seed_{seed}/{self.search.metric}": v for seed, v in scores.items()})
        return out
