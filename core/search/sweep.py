"""A sweep: open the study and its MLflow run, take trials until the study is full, report.

``Sweep.open`` creates (or loads) the study and the MLflow sweep run before any
worker starts; ``Sweep.work`` takes trials until the study holds
``search.trials`` of them (complete, pruned or running: failed ones are
replaced); ``Sweep.finish`` writes the best config and the plots. Several
processes (``--workers``, or ``mentor sweep`` on several machines with one RDB
storage) each call ``work`` on the same study. A sweep that was stopped goes
on where it was by running the same command again.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from ..config.schema import check_name
from ..config.search import SearchConfig
from ..engine import checkpoint
from ..pipeline import git_commit
from ..plugins import Plugins, default_plugins
from ..tracking.tracker import Tracker, fluent_tracking_uri
from . import report, space
from .runs import SweepRuns
from .storage import StorageError, default_url, masked, open_storage, sweep_dir
from .trial import HOST, PID, Objective

#: Trials that count toward ``search.trials``: failed ones are replaced by new ones.
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


class SweepError(Exception):
    """A sweep cannot start: no search block, a bad study name, a storage that does not open."""


def counted(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED))


@dataclass
class StaleTrials:
    """Told by Optuna (RDB heartbeats) of a trial whose worker died: ends its MLflow runs KILLED."""

    runs: SweepRuns | None = None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.runs is not None:
            self.runs.kill_trial(trial.number)


@dataclass
class Sweep:
    """One process's part in a study: ``open()`` first, then ``work()`` and/or ``finish()``."""

    experiment: object  # the validated experiment, with its search block
    plugins: Plugins = field(default_factory=default_plugins)
    trials: int | None = None  # the study's size; default search.trials
    storage: str | None = None  # default: a journal file under mlruns/sweeps/<study>/
    study_name: str | None = None  # default: the experiment's name
    worker: int | None = None  # the index of a worker started by --workers
    best_path: Path | None = field(default=None, init=False)  # written by finish()

    def __post_init__(self):
        if self.experiment.search is None:
            raise SweepError(f"experiment '{self.experiment.name}' has no search block: add one "
                             "(search: {metric: ..., space: {...}}) to sweep it")
        self.search: SearchConfig = self.experiment.search
        if self.trials is not None:
            self.search = self.search.model_copy(update={"trials": self.trials})
        self.study_name = self.study_name or self.experiment.name
        try:
            check_name(self.study_name)
        except ValueError as exc:
            raise SweepError(f"study name: {exc}") from None
        self.url = self.storage or default_url(self.study_name)
        self.target = self.search.trials
        if self.search.sampler.name == "grid":
            self.target = min(self.target, space.grid_size(self.search.space))

    # -- before any worker -------------------------------------------------------------------
    def open(self) -> Sweep:
        """Open (or create) the study and the MLflow sweep run; SweepError if the storage fails."""
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is ours; errors reach the CLI
        stale = StaleTrials()
        try:
            storage = open_storage(self.url, on_stale=stale)
        except StorageError as exc:
            raise SweepError(str(exc)) from None
        sampler, pruner = space.make_sampler(self.search, self.worker or 0), space.make_pruner(self.search)
        try:  # exactly one process creates a study (the storage sees to it): that one makes the sweep run
            self.study = optuna.create_study(storage=storage, study_name=self.study_name, direction=self.search.goal,
                                             sampler=sampler, pruner=pruner)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            self.study = optuna.load_study(storage=storage, study_name=self.study_name, sampler=sampler, pruner=pruner)
            created = False
        if self.study.direction.name.lower() != self.search.goal:
            raise SweepError(f"study '{self.study_name}' in {masked(self.url)} was made to "
                             f"{self.study.direction.name.lower()}, this file asks to {self.search.goal}: "
                             "use another --study")
        exp = self.experiment
        self.tracker = Tracker(exp.tracking.experiment or exp.name, exp.tracking.uri)
        self.runs = stale.runs = SweepRuns(self.tracker, self.study_name)
        search = self.search.model_dump(mode="json")
        search["space"] = {space.mlflow_key(k): str({kk: vv for kk, vv in v.items() if vv not in (None, False)})
                           for k, v in search["space"].items()}
        tags = {"mentor.metric": self.search.metric, "mentor.direction": self.search.goal,
                "mentor.storage": masked(self.url), "mentor.git_commit": git_commit()}
        config = yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False)
        # a study without trials that another process just created: that process is making the sweep run
        self.runs.open(tags, {"search": search}, config, wait=not created and not self.study.trials)
        self._fail_dead_local_trials()
        return self

    def remaining(self) -> int:
        """Trials still to take before the study is full."""
        return max(0, self.target - counted(self.study))

    # -- a worker ----------------------------------------------------------------------------
    def work(self) -> int:
        """Take trials until the study is full; the number this process ran."""
        if not self.remaining():
            print(f"study '{self.study_name}' already holds {self.target} trials; raise --trials to add more")
            return 0
        base = self.experiment.model_dump(mode="json", exclude={"search"})
        objective = Objective(base, self.search, self.plugins, self.runs)
        ran = 0

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            nonlocal ran
            ran += 1
            self._say(trial)
            if counted(study) >= self.target:
                study.stop()

        # Tracker.flush goes through MLflow's fluent API: point it at this sweep's store (otherwise it
        # opens MLflow's default ./mlflow.db, which concurrent workers would all try to create)
        with fluent_tracking_uri(self.tracker.uri):
            self.study.optimize(objective, callbacks=[after_trial], gc_after_trial=True)
        return ran

    def _say(self, trial: optuna.trial.FrozenTrial) -> None:
        what = {TrialState.COMPLETE: f"value {trial.value:.4f}" if trial.value is not None else "done",
                TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(trial.state, trial.state.name)
        best = report.best_trial(self.study)
        tail = f" (best {best.value:.4f}, trial {best.number})" if best is not None else ""
        print(f"[{self.study_name}] trial {trial.number}: {what}{tail}", flush=True)

    def _fail_dead_local_trials(self) -> None:
        """Trials left RUNNING by a process of this machine that no longer exists (killed hard):
        fail them (they stop counting) and end their MLflow runs KILLED."""
        host = socket.gethostname()
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = trial.user_attrs.get(PID)
            if trial.user_attrs.get(HOST) != host or pid is None or checkpoint.pid_alive(int(pid)):
                continue
            self.study.tell(trial.number, state=TrialState.FAIL)
            self.runs.kill_trial(trial.number)
            print(f"[{self.study_name}] trial {trial.number}: its worker (pid {pid}) is gone; marked failed")

    # -- after the workers -------------------------------------------------------------------
    def finish(self, status: str = "FINISHED") -> Path | None:
        """Write the best trial's config (file and artifact) and the plots; end the sweep run."""
        with fluent_tracking_uri(self.tracker.uri):
            path = self._summarise(status)
        self.best_path = path
        return path

    def _summarise(self, status: str) -> Path | None:
        tracker, run_id = self.tracker, self.runs.run_id
        path = None
        try:
            trials = self.study.get_trials(deepcopy=False)
            counts = {f"trials/{s.name.lower()}": sum(t.state == s for t in trials)
                      for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
            tracker.log_metrics(run_id, counts)
            best = report.best_trial(self.study)
            path = sweep_dir(self.study_name) / "best.yaml"
            text = report.best_config_text(self.study, self.search, path)
            if best is not None and text is not None:
                checkpoint.write_text_atomic(text, path)
                tracker.log_text(run_id, text, "best.yaml")
                tracker.log_metrics(run_id, {"best/value": best.value, f"best/{self.search.metric}": best.value})
                tracker.set_tags(run_id, {"mentor.best_trial": str(best.number)})
            else:
                path = None
            for name, figure in report.figures(self.study).items():
                tracker.log_figure(run_id, figure, name)
        finally:
            self.runs.end(status)
        return path


def run_sweep(experiment, plugins: Plugins | None = None, **options) -> Sweep:
    """Open, work, finish in this process (the library form of ``mentor sweep``)."""
    sweep = Sweep(experiment, plugins or default_plugins(), **options).open()
    status = "FAILED"
    try:
        sweep.work()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        sweep.finish(status)
    return sweep


def run_workers(command: list[str], workers: int) -> list[int]:
    """Start ``workers`` processes running ``command`` (a ``mentor sweep ... --workers 1``
    line) with ``--worker-index i``; wait for all; their exit codes.

    The machine's cores are shared out (OMP_NUM_THREADS) so the workers do not
    fight over them. Interrupted, it stops the workers (they end their trials KILLED).
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    procs = [subprocess.Popen([*command, "--worker-index", str(i)], env=env) for i in range(workers)]
    try:
        return [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:  # a terminal's Ctrl-C reached them too; a `kill` of this process did not
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.terminate()
        for p in procs:
            p.wait(timeout=120)
        raise


def worker_command(file: str, overrides: list[str], trials: int, url: str, study: str) -> list[str]:
    """The command line of one worker of a ``--workers`` sweep."""
    command = [sys.executable, "-m", "mentor.cli", "sweep", str(file), "--trials", str(trials),
               "--storage", url, "--study", study, "--workers", "1"]
    for item in overrides:
        command += ["--set", item]
    return command
