"""Running an experiment: data, splits, stages in order, all recorded in MLflow.

A stage's method gets a ``StageContext`` (core/context.py), built from the
run's ``RunState``: the data splits, model and loss builders, the models
trained by earlier stages, and ``fit`` (the shared loop).
State lives in ``<checkpoint_dir>/<experiment>/<parent run id>/<stage>/``: the
loop's checkpoint, the final weights and ``result.json`` (written last, it
marks the stage done), so ``mentor run --resume`` skips finished stages and
continues the interrupted one from its last epoch.

Under torchrun every rank runs the stages; rank 0 alone records in MLflow
(the others get a ``NullTracker``), decides which parent run (and so which
state folder) the run uses and hands it to the others, and writes the state
files, which the others read after a barrier.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from . import shipping
from .config.errors import located_error
from .config.loader import references, stage_model_key, trained_model_key
from .config.schema import applicable
from .context import RunState, StageContext, StageResult
from .context_recording import StopRun
from .data.splits import SplitError, Splits, make_splits, validation_rows
from .data.types import DataInfoError
from .engine import distributed
from .engine.runtime import choose_runtime
from .plugins import Plugins, default_plugins
from .run_checks import check_inputs, check_modality, check_targets
from .tracking.tracker import MAX_PARAM_LENGTH, NullTracker, Tracker, flatten
from .version import __version__


class NothingToResume(Exception):
    """``--resume`` cannot continue: no unfinished run of this config, no such run, a finished run, a
    stage's run instead of its parent, or a run of another configuration (unless told to go on)."""


@contextlib.contextmanager
def deferred_interrupts():
    """Hold SIGINT and SIGTERM while the block runs, then raise ``KeyboardInterrupt`` if one came.

    For the few calls that end MLflow runs: interrupted halfway, they would leave a run RUNNING
    forever. Outside the main thread signals cannot be caught, and nothing is deferred.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise KeyboardInterrupt


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class ExperimentRunner:
    """Runs (or resumes) one experiment end to end.

    ``parent_run_id`` nests the experiment's run under another run (a search
    trial's); ``tags`` are added to the experiment's run.
    """

    def __init__(self, experiment, plugins: Plugins | None = None, parent_run_id: str | None = None,
                 tags: dict[str, str] | None = None):
        self.experiment = experiment
        self.plugins = plugins or default_plugins()
        self.parent_run_id = parent_run_id
        self.tags = dict(tags or {})
        self.config = experiment.model_dump(mode="json", exclude={"search"})  # what runs, not how it is searched
        self.hash = config_hash(self.config)
        self.results: dict[str, StageResult] = {}
        self.resume_changed = False  # --resume-changed: continue a run whose config differs

    def state(self) -> RunState:
        """What this run's stages read (``StageContext`` is built from it)."""
        return RunState(self.experiment, self.splits, self.runtime, self.plugins.registry, self.plugins.hook,
                        self.tracker, self.run_dir, self.results, pool=getattr(self, "pool", None))

    def load_data(self) -> Splits:
        data = self.experiment.data
        source = self.plugins.registry.get("data_source", data.source)
        try:
            bundle = source.factory(**data.params)
        except DataInfoError as exc:  # the source's own statistics: name the source, not a traceback
            raise located_error(self.experiment, ("data", "source"), f"data source '{data.source}': {exc}") from None
        check_modality(self.experiment, self.plugins.registry, bundle)
        try:
            splits = make_splits(bundle, val_size=validation_rows(data.val_size, len(bundle.train)),
                                 labeled_per_class=data.labeled_per_class,
                                 split_seed=data.split_seed, test_size=data.test_size)
        except SplitError as exc:
            raise located_error(self.experiment, ("data", exc.field), str(exc)) from None
        for index, stage in enumerate(self.experiment.stages):  # before anything trains
            n = getattr(stage, "train_subset", None)
            if n is not None and n > len(splits.labeled):
                raise located_error(self.experiment, ("stages", index, "train_subset"),
                                    f"{n} is more than the {len(splits.labeled)} labeled training {splits.info.noun}")
        if data.unlabeled is not None:  # before anything trains: a missing folder is reported at once
            self.pool = self.plugins.registry.get("unlabeled_source", data.unlabeled.source).build(
                **data.unlabeled.params)
        check_inputs(self.experiment, self.plugins.registry, splits.info)
        check_targets(self.experiment, self.plugins.registry, splits.info)
        return splits

    def _find_resumable(self, run_id: str | None, changed: bool = False) -> str:
        if run_id:
            return self._check_resumable(run_id, changed)
        runs = self.tracker.find_runs(
            f"tags.`mentor.config_hash` = '{self.hash}' and tags.`mentor.kind` = 'experiment'"
        )
        for run in runs:
            if run.info.status != "FINISHED":
                return run.info.run_id
        raise NothingToResume(
            f"no unfinished run of experiment '{self.tracker.experiment}' with this configuration "
            f"(config hash {self.hash}) in {self.tracker.uri}"
        )

    def _check_resumable(self, run_id: str, changed: bool) -> str:
        """The run ``--resume RUN_ID`` names, if it is this experiment's unfinished run of this config."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.tracker.client.get_run(run_id)
        except MlflowException:
            raise NothingToResume(f"no run {run_id} in {self.tracker.uri}") from None
        tags = run.data.tags
        if run.info.experiment_id != self.tracker.experiment_id:
            raise NothingToResume(f"run {run_id} is not in experiment '{self.tracker.experiment}'")
        if tags.get("mentor.kind") != "experiment":
            parent = tags.get("mlflow.parentRunId")
            what = f"the {tags.get('mentor.kind', 'nested')} run '{run.info.run_name}'"
            hint = f" of run {parent}: resume that one (mentor run FILE --resume {parent})" if parent else ""
            raise NothingToResume(f"run {run_id} is {what}{hint}")
        if run.info.status == "FINISHED":
            raise NothingToResume(f"run {run_id} finished: nothing to resume (run without --resume for a new run)")
        if tags.get("mentor.config_hash") != self.hash and not changed:
            old = {k: v for k, v in run.data.params.items() if not k.startswith("data.rows.")}  # found, not set
            now = {k[:250]: str(v)[:MAX_PARAM_LENGTH] for k, v in flatten(applicable(self.config)).items()}
            diff = sorted(k for k in old.keys() | now.keys() if old.get(k) != now.get(k))
            shown = ", ".join(f"{k}: {old.get(k, '(unset)')} -> {now.get(k, '(unset)')}" for k in diff[:5])
            more = f" and {len(diff) - 5} more" if len(diff) > 5 else ""
            raise NothingToResume(
                f"run {run_id} was started with another configuration ({shown or 'config hash differs'}{more}); "
                "run without --resume for a new run, or add --resume-changed to continue it with this one "
                "(finished stages stay as they were)")
        return run_id

    def run(self, resume: bool = False, resume_run_id: str | None = None,
            resume_changed: bool = False) -> dict[str, StageResult]:
        """Run the stages; under torchrun, in the process group of all ranks."""
        self.runtime = choose_runtime(self.experiment.engine)
        with distributed.group(self.runtime.device) as device:
            self.runtime.device = device
            self.resume_changed = resume_changed
            return self._run(resume, resume_run_id)

    def _open_parent(self, resume: bool, resume_run_id: str | None) -> str:
        """Create (or find, to resume) the experiment's MLflow run; rank 0 only."""
        exp = self.experiment
        self.tracker = Tracker(exp.tracking.experiment or exp.name, exp.tracking.uri)
        tags = {
            "mentor.kind": "experiment", "mentor.version": __version__, "mentor.git_commit": git_commit(),
            "mentor.config_hash": self.hash, "mentor.device": str(self.runtime.device),
            "mentor.world_size": str(distributed.world_size()), **self.tags,
        }
        if resume or resume_run_id:
            changed = self.resume_changed
            parent = self._find_resumable(resume_run_id, changed)
            self.tracker.reopen(parent)
            if changed and self.tracker.client.get_run(parent).data.tags.get("mentor.config_hash") != self.hash:
                self.tracker.set_tags(parent, {"mentor.config_hash": self.hash, "mentor.resumed_changed": "true"})
                self.tracker.log_text(parent, yaml.safe_dump(self.config, sort_keys=False), "config-resumed.yaml")
            done = [s.name for s in exp.stages
                    if (Path(exp.tracking.checkpoint_dir) / exp.name / parent / s.name / "result.json").is_file()]
            print(f"resuming run {parent} in {self.tracker.uri}"
                  + (f" (done: {', '.join(done)})" if done else " (no stage finished yet)"), file=sys.stderr)
            self._record_config(parent)  # a kill right after the run was made may have cut this short
            return parent
        parent = self.tracker.start_run(self.run_name(), {**self.source_tags(exp.description), **tags},
                                        parent=self.parent_run_id)
        self._record_config(parent)
        return parent

    def split_rows(self) -> dict[str, int]:
        """How many rows each split holds (``val_size`` and ``labeled_per_class`` resolved against the data)."""
        s = self.splits
        return {"labeled": len(s.labeled), "val": len(s.val), "unlabeled": len(s.unlabeled), "test": len(s.test)}

    def data_line(self) -> str:
        """The data in one line: what the splits hold, as the run uses them."""
        rows = self.split_rows()
        unlabeled = f", {rows['unlabeled']:,} unlabeled" if rows["unlabeled"] else ""
        noun = self.splits.info.noun
        return (f"{self.experiment.data.source}: {rows['labeled']:,} labeled training {noun}, {rows['val']:,} "
                f"validation (val_size {self.experiment.data.val_size}){unlabeled}, {rows['test']:,} test")

    def _record_config(self, parent: str) -> None:
        """The parameters and config.yaml of the experiment's run; what is there already stays."""
        self.tracker.log_params(parent, applicable(self.config))
        self.tracker.log_params(parent, {f"data.rows.{k}": v for k, v in self.split_rows().items()})
        if not self.tracker.has_artifact(parent, "config.yaml"):
            self.tracker.log_text(parent, yaml.safe_dump(self.config, sort_keys=False), "config.yaml")

    def _run(self, resume: bool, resume_run_id: str | None) -> dict[str, StageResult]:
        exp = self.experiment
        with distributed.main_first():  # a download happens once
            self.splits = self.load_data()
        if not distributed.is_main():
            self.tracker = NullTracker(exp.tracking.experiment or exp.name)
        distributed.on_main(self._check_checkpoint_dir)  # before a run exists that it would leave RUNNING
        self.parent = distributed.on_main(lambda: self._open_parent(resume, resume_run_id))
        self.run_dir = Path(exp.tracking.checkpoint_dir) / exp.name / self.parent
        hook = self.plugins.hook
        status = "FAILED"
        stage_run = None
        callbacks = [self.plugins.registry.get("callback", spec.name).factory(**spec.params) for spec in exp.callbacks]
        for callback in callbacks:
            self.plugins.manager.register(callback)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            state = self.state()
            hook.on_experiment_start(experiment=exp, run_id=self.parent)
            self._check_weights(state)
            shipping.check_register(state)
            for index, stage in enumerate(exp.stages):
                ctx = StageContext(state, index)
                done = ctx.dir / "result.json"
                if done.is_file():
                    self.results[stage.name] = StageResult.load(done)
                    self._close_done_stage(stage.name, self.results[stage.name])
                    continue
                stage_run = self._stage_run(stage)
                ctx.run_id = stage_run
                hook.on_stage_start(stage=stage, ctx=ctx)
                method = self.plugins.registry.get("method", stage.kind)
                result = method.factory(stage, ctx)
                self.results[stage.name] = result
                if stage.export is not None and result.model_key is not None:  # rank 0 exports, the rest wait
                    distributed.on_main(functools.partial(self._export, ctx, result))
                if distributed.is_main():
                    result.save(done)
                self.tracker.log_metrics(self.parent, {f"{stage.name}/{k}": v for k, v in result.metrics.items()})
                hook.on_stage_end(stage=stage, ctx=ctx, result=result)
                self.tracker.flush()
                self.tracker.end_run(stage_run, "FINISHED")
                stage_run = None
            self.ship(state)
            status = "FINISHED"
        except (KeyboardInterrupt, StopRun):
            status = "KILLED"
            raise
        finally:
            with deferred_interrupts():  # a second Ctrl-C (or a kill) must not leave a run RUNNING
                self.tracker.flush()
                if stage_run:
                    self.tracker.end_run(stage_run, status)
                self.tracker.end_run(self.parent, status)
            try:
                hook.on_experiment_end(experiment=exp, run_id=self.parent, results=self.results, status=status)
            finally:
                for callback in callbacks:
                    self.plugins.manager.unregister(callback)
        return self.results

    def _close_done_stage(self, name: str, result: StageResult) -> None:
        """A stage that finished before a kill: what a kill may have cut short after its result was
        written (its metrics on the experiment's run, the end of its own run) is done now."""
        self.tracker.log_metrics(self.parent, {f"{name}/{k}": v for k, v in result.metrics.items()})
        for run in self.tracker.children(self.parent):
            if run.data.tags.get("mentor.stage") == name and run.info.status != "FINISHED":
                self.tracker.end_run(run.info.run_id, "FINISHED")

    @staticmethod
    def _export(ctx: StageContext, result: StageResult) -> None:
        record = shipping.export_stage(ctx, result)
        print(f"[{ctx.stage.name}] exported: {record['onnx']} (ONNX Runtime test accuracy "
              f"{record['onnx_test_accuracy']:.4f})" + (f", {record['int8']} (int8, {record['int8_status']})"
                                                          if record.get("int8") else ""), flush=True)

    def ship(self, state: RunState) -> None:
        """The run's compression report (``report:``) and its registered student (``tracking.register``),
        on rank 0 (the others wait)."""
        self.report, self.registered = None, None
        distributed.on_main(lambda: self._ship(state))

    def _ship(self, state: RunState) -> None:
        self.report = shipping.compression_report(state, self.parent)
        if self.experiment.tracking.register is not None:
            stage = shipping.register_stage(self.experiment)
            stage_run = next(r.info.run_id for r in self.tracker.children(self.parent)
                             if r.data.tags.get("mentor.stage") == stage)
            self.registered = shipping.register_student(state, self.parent, stage_run)

    def _check_checkpoint_dir(self) -> None:
        """``tracking.checkpoint_dir`` can hold this experiment's resume state: a located error if not."""
        root = Path(self.experiment.tracking.checkpoint_dir) / self.experiment.name
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise located_error(self.experiment, ("tracking", "checkpoint_dir"),
                                f"cannot write the run's resume state under {root}: "
                                f"{exc.strerror or exc}") from None

    def _check_weights(self, state: RunState) -> None:
        """Before anything trains: every model with weights of its own loads, and every teacher given by
        a model key can teach (see ``StageContext.teacher``), so a bad checkpoint, URI or teacher fails
        the run at once with a located error, not after the stages before it have trained."""
        checked: set[str] = set()
        for index, stage in enumerate(self.experiment.stages):
            ctx = StageContext(state, index)
            if (ctx.dir / "result.json").is_file():
                continue
            earlier = {s.name for s in self.experiment.stages[:index] if trained_model_key(s) is not None}
            for field, ref, _, value in references(stage):
                if ref.target == "teacher" and value not in earlier:
                    ctx.teacher(value, field)
                    checked.add(value)
        for key, spec in self.experiment.models.items():
            if spec.has_weights and key not in checked:
                StageContext(state, 0).build_model(key)

    def run_name(self) -> str:
        """What tells this run from the experiment's others in MLflow's runs table: its seed and its
        ``--set`` overrides, or (without any) a short hash of its config."""
        doc = getattr(self.experiment, "_document", None)
        overrides = list(doc.overrides) if doc is not None else []
        what = ", ".join(overrides) if overrides else self.hash[:7]
        return f"{self.experiment.name} · seed {self.experiment.seed} · {what}"

    def source_tags(self, note: str) -> dict[str, str]:
        """User, source and commit as MLflow's own clients record them, and ``note`` as the run's
        description (the MLflow UI shows ``mlflow.note.content`` on the run's page)."""
        from mlflow.tracking.context.registry import resolve_tags

        doc = getattr(self.experiment, "_document", None)
        tags = resolve_tags({})
        if doc is not None and Path(doc.source).is_file():
            tags["mlflow.source.name"] = doc.source
        commit = git_commit()
        if commit != "unknown":
            tags["mlflow.source.git.commit"] = commit
        if note:
            tags["mlflow.note.content"] = note
        return tags

    def _stage_run(self, stage) -> str:
        for run in self.tracker.children(self.parent):
            if run.data.tags.get("mentor.stage") == stage.name:
                self.tracker.reopen(run.info.run_id)
                self._record_stage(run.info.run_id, stage)  # a kill right after the run was made may have cut it
                return run.info.run_id
        key = stage_model_key(self.experiment, stage)  # a stage that trains nothing (evaluate): the model it uses
        model = (self.experiment.models[key].name or key) if key else ""
        tags = {"mentor.kind": "stage", "mentor.stage": stage.name, "mentor.method": stage.kind,
                "mentor.model": model}
        method = self.plugins.registry.get("method", stage.kind)
        note = f"stage {stage.name} ({stage.kind}: {method.description}) of {self.experiment.name}"
        name = f"{stage.name} · {self.run_name().split(' · ', 1)[1]}"
        run_id = self.tracker.start_run(name, {**self.source_tags(note), **tags}, parent=self.parent)
        self._record_stage(run_id, stage)
        return run_id

    def _record_stage(self, run_id: str, stage) -> None:
        """A stage run's parameters and its resolved config as stage.yaml; what is there already stays."""
        stage_config = stage.model_dump(mode="json")
        self.tracker.log_params(run_id, {"stage": applicable(stage_config),
                                         "data": self.config["data"], "seed": self.experiment.seed})
        if not self.tracker.has_artifact(run_id, "stage.yaml"):
            self.tracker.log_text(run_id, yaml.safe_dump(stage_config, sort_keys=False), "stage.yaml")


def run_experiment(experiment, plugins: Plugins | None = None, resume: bool = False,
                   resume_run_id: str | None = None, parent_run_id: str | None = None,
                   resume_changed: bool = False) -> dict[str, StageResult]:
    return ExperimentRunner(experiment, plugins, parent_run_id).run(resume=resume, resume_run_id=resume_run_id,
                                                                    resume_changed=resume_changed)


__all__ = ["ExperimentRunner", "NothingToResume", "run_experiment"]
