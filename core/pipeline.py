"""Running an experiment: data, splits, stages in order, all recorded in MLflow.

A stage's method gets a ``StageContext``: the data splits, model and loss
builders, the models trained by earlier stages, and ``fit`` (the shared loop).
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
import hashlib
import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from . import __version__
from .config.loader import trained_model_key
from .config.schema import LossSpec, TrainingConfig
from .data.loader import Batches
from .data.splits import Splits, StageData, balanced_subset, make_splits
from .data.types import DataInfo, ImageSet
from .engine import checkpoint, distributed
from .engine.loop import FitResult, Runtime, TrainTask, fit, predict
from .losses import Loss
from .plugins import Plugins, default_plugins
from .tracking.tracker import NullTracker, Tracker

SUMMARY_KEYS = ("val/accuracy", "test/accuracy", "val/loss", "test/loss")


class NothingToResume(Exception):
    """``--resume`` found no unfinished run of this experiment and config."""


class StopRun(Exception):
    """Raised by a hook to stop a run on purpose (a pruned search trial, early stopping):
    its runs end KILLED, not FAILED, and the exception goes on to the caller."""


@dataclass
class StageResult:
    """What a stage leaves for later stages and for the record."""

    stage: str
    kind: str
    model_key: str | None = None
    weights: str | None = None  # path of the trained model's final state_dict
    metrics: dict[str, float] = field(default_factory=dict)  # best/..., last/...
    history: list[dict[str, float]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> StageResult:
        return cls(**json.loads(path.read_text()))


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def choose_runtime(engine) -> Runtime:
    if engine.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("engine.device is 'cuda' but no CUDA device is available")
    cuda = engine.device == "cuda" or (engine.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    bf16 = engine.precision == "bf16" or (engine.precision == "auto" and cuda)
    channels_last = engine.channels_last if engine.channels_last is not None else cuda
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif engine.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return Runtime(device, torch.bfloat16 if bf16 else None, channels_last, engine.compile, engine.progress,
                   engine.data_placement, engine.loader_workers)


class StageContext:
    """Everything a method's runner may use; handed to it by the pipeline."""

    def __init__(self, runner: ExperimentRunner, index: int):
        self._runner = runner
        self.index = index
        self.stage = runner.experiment.stages[index]
        self.experiment = runner.experiment
        self.splits: StageData = runner.splits.for_methods()  # no hidden labels in here
        self.info: DataInfo = runner.splits.info
        self.runtime: Runtime = runner.runtime
        self.device = runner.runtime.device
        self.registry = runner.plugins.registry
        self.hook = runner.plugins.hook
        self.seed = self.stage.seed if self.stage.seed is not None else self.experiment.seed
        self.dir = runner.run_dir / self.stage.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_id: str = ""  # the stage's MLflow run, set by the pipeline

    # -- building blocks ----------------------------------------------------------
    def build_model(self, key: str, init: str | None = None) -> nn.Module:
        """A fresh ``models[key]``, seeded; from its checkpoint or stage ``init`` if given."""
        spec = self.experiment.models[key]
        torch.manual_seed(self.seed)
        component = self.registry.get("model", spec.name)
        model = component.factory(self.info.num_classes, self.info.in_channels, **spec.params)
        if spec.checkpoint:
            checkpoint.load_weights(model, checkpoint.load(spec.checkpoint), f"models.{key}.checkpoint")
        if init:
            result = self._runner.results[init]
            checkpoint.load_weights(model, checkpoint.load(result.weights), f"weights of stage '{init}'")
        return model

    def trained_model(self, stage_name: str) -> nn.Module:
        """The model that an earlier stage trained, with its final weights."""
        result = self._runner.results[stage_name]
        if result.model_key is None or result.weights is None:
            raise ValueError(f"stage '{stage_name}' did not train a model")
        return self.build_model(result.model_key, init=stage_name)

    def build_loss(self, spec: LossSpec) -> Loss:
        component = self.registry.get("loss", spec.name)
        return component.factory(**spec.params)

    def training_data(self, cfg: TrainingConfig | None = None) -> ImageSet:
        """The labeled split, or the stage's class-balanced ``train_subset`` of it."""
        cfg = cfg or self.stage
        data = self.splits.labeled
        n = getattr(cfg, "train_subset", None)
        if n is not None:
            if n > len(data):
                raise ValueError(f"stage '{self.stage.name}': train_subset {n} > {len(data)} labeled rows")
            data = data.subset(balanced_subset(data.labels, n, self.experiment.data.split_seed))
        return data

    def example(self, data: ImageSet | None = None, n: int = 2) -> torch.Tensor:
        """A normalised batch of ``n`` training images, for probing shapes."""
        data = data if data is not None else self.splits.labeled
        rows = torch.arange(min(n, len(data)))
        batches = Batches(data.subset(rows), n, shuffle=False, mean=self.info.mean, std=self.info.std)
        return next(iter(batches))[0]

    # -- the loop -----------------------------------------------------------------
    def fit(self, task: TrainTask, model_key: str, cfg: TrainingConfig | None = None, *,
            phase: str | None = None, step_offset: int = 0, export: bool = True) -> StageResult:
        """Run the shared training loop on ``task`` and record everything about it.

        A method that fits more than once in a stage (pre-train then fine-tune,
        rounds) names each fit's ``phase``: its state lives in its own folder, and
        a finished phase is not run again on resume (its weights are loaded into
        ``task.model`` instead). ``step_offset`` continues the epoch axis of the
        current run; ``export`` logs the model as an MLflow model.
        """
        cfg = cfg or self.stage
        tracker = self._runner.tracker
        folder = self.dir / phase if phase else self.dir
        done = folder / "phase.json"
        if phase and done.is_file():
            result = StageResult.load(done)
            checkpoint.load_weights(task.model, checkpoint.load(result.weights), result.weights)
            return result

        def report(epoch: int, metrics: dict[str, float]) -> None:
            tracker.log_metrics(self.run_id, {k: v for k, v in metrics.items() if k != "epoch"},
                                step=step_offset + epoch)
            self.hook.on_epoch_end(stage=self.stage, ctx=self, epoch=epoch, metrics=metrics)

        result: FitResult = fit(
            task, cfg, stage=f"{self.stage.name}/{phase}" if phase else self.stage.name, seed=self.seed,
            info=self.info, eval_sets={"val": self.splits.val, "test": self.splits.test},
            augment=cfg.augment or self.experiment.data.augment, runtime=self.runtime,
            checkpoint_path=folder / "checkpoint.pt", report=report,
        )
        weights = folder / "final.pt"
        model = getattr(task.model, "_orig_mod", task.model)
        summary = {f"best/{k}": result.best[k] for k in SUMMARY_KEYS if k in result.best}
        summary.update({f"last/{k}": result.last[k] for k in SUMMARY_KEYS if k in result.last})
        if "epoch" in result.best:
            summary["best/epoch"] = step_offset + result.best["epoch"]
        outcome = StageResult(self.stage.name, self.stage.kind, model_key, str(weights), summary, result.history)
        if distributed.is_main():
            checkpoint.save_atomic({k: v.cpu() for k, v in model.state_dict().items()}, weights)
            tracker.log_metrics(self.run_id, summary, step=step_offset + cfg.epochs)
            self._log_artifacts(model, model_key, result, weights, f"{phase}/" if phase else "", export)
            if phase:
                outcome.save(done)
        distributed.barrier()  # the other ranks may read final.pt from here on
        return outcome

    def _log_artifacts(self, model: nn.Module, model_key: str, result: FitResult, weights: Path,
                       prefix: str, export: bool) -> None:
        from .tracking import plots

        tracker, run = self._runner.tracker, self.run_id
        tracker.log_figure(run, plots.learning_curves(result.history), f"{prefix}plots/learning_curves.png")
        test = Batches(self.splits.test, 1024, shuffle=False, mean=self.info.mean, std=self.info.std,
                       device=self.device)
        if len(self.splits.test):
            y, p = predict(model, test, self.runtime)
            cm = plots.confusion_matrix(y, p, self.info.num_classes)
            figure = plots.confusion_matrix_figure(cm, list(self.info.class_names) or None)
            tracker.log_figure(run, figure, f"{prefix}plots/confusion_matrix.png")
        tracker.log_file(run, weights, f"{prefix}checkpoints")
        if export and self.experiment.tracking.log_model:
            example = next(iter(test.epoch(0)))[0][:2].float().cpu().numpy() if len(self.splits.test) else None
            tracker.log_model(run, model.float().cpu().eval(), f"{self.stage.name}-{model_key}", example)
            model.to(self.device)

    @contextlib.contextmanager
    def nested(self, name: str, tags: dict[str, str] | None = None):
        """A child MLflow run under the stage's (a round, a phase); reused on resume.

        Inside the block, ``log_metrics`` and ``fit`` record into the child.
        """
        tracker, parent = self._runner.tracker, self.run_id
        child = next((r.info.run_id for r in tracker.children(parent) if r.data.tags.get("mentor.child") == name),
                     None)
        if child is None:
            child = tracker.start_run(f"{self.stage.name}/{name}", {
                "mentor.kind": "child", "mentor.child": name, "mentor.stage": self.stage.name,
                "mentor.method": self.stage.kind, **(tags or {})}, parent=parent)
        else:
            tracker.reopen(child)
        self.run_id = child
        status = "FAILED"
        try:
            yield child
            status = "FINISHED"
        except (KeyboardInterrupt, StopRun):
            status = "KILLED"
            raise
        finally:
            self.run_id = parent
            tracker.flush()
            tracker.end_run(child, status)

    def pseudo_label_diagnostics(self, scores, selection):
        """Precision, coverage and per-class counts of a selection, against the hidden labels.

        Computed here in the core, so that methods never hold those labels.
        """
        from .pseudo_labels import diagnostics

        return diagnostics(scores, selection, self._runner.splits)

    @property
    def tracker(self) -> Tracker:
        return self._runner.tracker

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._runner.tracker.log_metrics(self.run_id, metrics, step)


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

    def _load_data(self) -> Splits:
        data = self.experiment.data
        source = self.plugins.registry.get("data_source", data.source)
        bundle = source.factory(**data.params)
        return make_splits(bundle, val_size=data.val_size, labeled_per_class=data.labeled_per_class,
                           split_seed=data.split_seed, test_size=data.test_size)

    def _find_resumable(self, run_id: str | None) -> str:
        if run_id:
            run = self.tracker.client.get_run(run_id)
            if run.info.experiment_id != self.tracker.experiment_id:
                raise NothingToResume(f"run {run_id} is not in experiment '{self.tracker.experiment}'")
            return run_id
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

    def run(self, resume: bool = False, resume_run_id: str | None = None) -> dict[str, StageResult]:
        """Run the stages; under torchrun, in the process group of all ranks."""
        self.runtime = choose_runtime(self.experiment.engine)
        with distributed.group(self.runtime.device) as device:
            self.runtime.device = device
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
            parent = self._find_resumable(resume_run_id)
            self.tracker.reopen(parent)
            return parent
        parent = self.tracker.start_run(exp.name, tags, parent=self.parent_run_id)
        self.tracker.log_params(parent, self.config)
        self.tracker.log_text(parent, yaml.safe_dump(self.config, sort_keys=False), "config.yaml")
        return parent

    def _run(self, resume: bool, resume_run_id: str | None) -> dict[str, StageResult]:
        exp = self.experiment
        with distributed.main_first():  # a download happens once
            self.splits = self._load_data()
        if not distributed.is_main():
            self.tracker = NullTracker(exp.tracking.experiment or exp.name)
        self.parent = distributed.on_main(lambda: self._open_parent(resume, resume_run_id))
        self.run_dir = Path(exp.tracking.checkpoint_dir) / exp.name / self.parent
        self.run_dir.mkdir(parents=True, exist_ok=True)
        hook = self.plugins.hook
        hook.on_experiment_start(experiment=exp, run_id=self.parent)
        status = "FAILED"
        stage_run = None
        try:
            for index, stage in enumerate(exp.stages):
                ctx = StageContext(self, index)
                done = ctx.dir / "result.json"
                if done.is_file():
                    self.results[stage.name] = StageResult.load(done)
                    continue
                stage_run = self._stage_run(stage)
                ctx.run_id = stage_run
                hook.on_stage_start(stage=stage, ctx=ctx)
                method = self.plugins.registry.get("method", stage.kind)
                result = method.factory(stage, ctx)
                if distributed.is_main():
                    result.save(done)
                self.results[stage.name] = result
                self.tracker.log_metrics(self.parent, {f"{stage.name}/{k}": v for k, v in result.metrics.items()})
                hook.on_stage_end(stage=stage, ctx=ctx, result=result)
                self.tracker.flush()
                self.tracker.end_run(stage_run, "FINISHED")
                stage_run = None
            status = "FINISHED"
        except (KeyboardInterrupt, StopRun):
            status = "KILLED"
            raise
        finally:
            self.tracker.flush()
            if stage_run:
                self.tracker.end_run(stage_run, status)
            self.tracker.end_run(self.parent, status)
            hook.on_experiment_end(experiment=exp, run_id=self.parent, results=self.results, status=status)
        return self.results

    def _stage_run(self, stage) -> str:
        for run in self.tracker.children(self.parent):
            if run.data.tags.get("mentor.stage") == stage.name:
                self.tracker.reopen(run.info.run_id)
                return run.info.run_id
        key = trained_model_key(stage)
        model = self.experiment.models[key].name if key else ""
        tags = {"mentor.kind": "stage", "mentor.stage": stage.name, "mentor.method": stage.kind,
                "mentor.model": model}
        run_id = self.tracker.start_run(stage.name, tags, parent=self.parent)
        self.tracker.log_params(run_id, {"stage": stage.model_dump(mode="json"),
                                         "data": self.config["data"], "seed": self.experiment.seed})
        return run_id


def run_experiment(experiment, plugins: Plugins | None = None, resume: bool = False,
                   resume_run_id: str | None = None, parent_run_id: str | None = None) -> dict[str, StageResult]:
    return ExperimentRunner(experiment, plugins, parent_run_id).run(resume=resume, resume_run_id=resume_run_id)


__all__ = [
    "ExperimentRunner",
    "NothingToResume",
    "StageContext",
    "StopRun",
    "StageResult",
    "TrainTask",
    "run_experiment",
]
