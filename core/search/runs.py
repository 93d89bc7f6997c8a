"""A sweep in MLflow: one parent run per study, a nested run per trial.

::

    sweep run        mentor.kind=sweep, mentor.study=<study>     (found by tag, so reused)
      trial run      mentor.kind=trial, mentor.trial=<number>    params: the sampled values
        experiment   mentor.kind=experiment (one per seed)       the usual `mentor run` tree
          stage ...

The sweep run is looked up by its study tag, so re-runs and other workers (on
any machine that logs to the same tracking server) add their trials to it. Only
the process that created the study creates its sweep run; one that finds a
study just made by another waits for that run, so two processes started at the
same instant still share one sweep run.
"""

from __future__ import annotations

import time
from typing import Any

from mlflow.entities import Metric, RunTag

from ..tracking.tracker import Tracker
from ..version import __version__
from .space import mlflow_key

WAIT_S = 60

#: Optuna's trial state -> how the trial's MLflow run ends.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


class SweepRuns:
    """The MLflow runs of one study in one MLflow experiment."""

    def __init__(self, tracker: Tracker, study: str):
        self.tracker = tracker
        self.study = study
        self.run_id: str | None = None

    def _sweep_runs(self) -> list:
        runs = self.tracker.find_runs(
            f"tags.`mentor.kind` = 'sweep' and tags.`mentor.study` = '{self.study}'")
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    def open(self, tags: dict[str, str], params: dict[str, Any], config_text: str, wait: bool = False) -> str:
        """The study's sweep run: found by tag (and reopened as RUNNING), else created.

        ``wait``: the study was just made by another process, which makes the sweep run:
        wait for it to appear (up to a minute) rather than make a second one.
        """
        deadline = time.time() + (WAIT_S if wait else 0)
        while True:
            runs = self._sweep_runs()
            if runs:
                self.run_id = runs[0].info.run_id
                self.tracker.reopen(self.run_id)
                return self.run_id
            if time.time() >= deadline:
                break
            time.sleep(0.5)
        self.run_id = self.tracker.start_run(self.study, {
            "mentor.kind": "sweep", "mentor.study": self.study, "mentor.version": __version__, **tags})
        self.tracker.log_params(self.run_id, params)
        self.tracker.log_text(self.run_id, config_text, "config.yaml")
        return self.run_id

    # -- trials ---------------------------------------------------------------------------
    def start_trial(self, number: int, values: dict[str, Any]) -> str:
        run_id = self.tracker.start_run(f"trial-{number}", {
            "mentor.kind": "trial", "mentor.study": self.study, "mentor.trial": str(number),
            "mentor.state": "RUNNING"}, parent=self.run_id)
        self.tracker.log_params(run_id, {mlflow_key(k): v for k, v in values.items()})
        return run_id

    def end_trial(self, run_id: str, state: str, metrics: dict[str, float], status: str | None = None) -> None:
        """Record the trial's outcome; a pruned trial ends KILLED, a failed one FAILED."""
        now = int(time.time() * 1000)
        self.tracker.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                                      tags=[RunTag("mentor.state", state)], synchronous=True)
        self.tracker.end_run(run_id, status or RUN_STATUS[state])

    def kill_trial(self, number: int) -> None:
        """End a dead worker's trial run, and whatever ran under it, as KILLED."""
        runs = self.tracker.find_runs(
            f"tags.`mentor.kind` = 'trial' and tags.`mentor.study` = '{self.study}' "
            f"and tags.`mentor.trial` = '{number}'")
        for run in runs:
            for child in self._descendants(run.info.run_id):
                if child.info.status == "RUNNING":
                    self.tracker.end_run(child.info.run_id, "KILLED")
            self.tracker.set_tags(run.info.run_id, {"mentor.state": "FAIL"})
            if run.info.status == "RUNNING":
                self.tracker.end_run(run.info.run_id, "KILLED")

    def _descendants(self, run_id: str) -> list:
        out = []
        for child in self.tracker.children(run_id):
            out.append(child)
            out.extend(self._descendants(child.info.run_id))
        return out

    # -- the end --------------------------------------------------------------------------
    def end(self, status: str) -> None:
        self.tracker.flush()
        self.tracker.end_run(self.run_id, status)
