"""What a method's runner gets: ``StageContext``, built from a plain ``RunState``.

A runner (``runner(stage, ctx) -> StageResult``) reads its data from
``ctx.splits`` and ``ctx.info``, builds models, losses and selection
strategies through the context, hands ``TrainTask``s to ``ctx.fit`` (the one
training loop) and records what else it has to say with the ``log_*``
methods. Everything here is public API (``mentor.StageContext``); a
built-in method uses nothing that a third-party one cannot.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config.errors import ConfigError, located_error
from .config.schema import TrainingConfig
from .context_data import DataAndCaches
from .context_models import ModelBuilding
from .context_recording import Recording
from .data.loader import Batches
from .data.splits import Splits, StageData
from .data.types import DataInfo
from .engine import checkpoint, distributed
from .engine.loop import FitResult, TrainTask, fit, predict
from .engine.runtime import Runtime
from .losses import flatten_positions
from .model_input import ModelInput, bare
from .summary import canonical, summary_name

SUMMARY_KEYS = ("val/accuracy", "test/accuracy", "val/loss", "test/loss")


@dataclass
class StageResult:
    """What a stage leaves for later stages and for the record."""

    stage: str
    kind: str
    model_key: str | None = None
    weights: str | None = None  # path of the kept state_dict (the best epoch's or the last, per `keep`)
    metrics: dict[str, float] = field(default_factory=dict)  # best.val.accuracy, kept.epoch... (mentor.summary)
    history: list[dict[str, float]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        checkpoint.write_text_atomic(json.dumps(asdict(self), indent=2), path)

    @classmethod
    def load(cls, path: Path) -> StageResult:
        data = json.loads(path.read_text())
        data["metrics"] = {canonical(k): v for k, v in data.get("metrics", {}).items()}  # older slash names
        return cls(**data)


@dataclass
class RunState:
    """What one run of an experiment holds for its stages: plain data, no runner behind it.

    The pipeline fills it in (``mentor run``); the bench fills it in its own
    way (a no-op tracker, a scratch folder). ``results`` grows as stages end.
    """

    experiment: Any
    splits: Splits
    runtime: Runtime
    registry: Any  # mentor's component Registry
    hook: Any  # pluggy's hook relay: lifecycle hooks are called through it
    tracker: Any  # mentor.tracking.Tracker, or a NullTracker
    run_dir: Path
    results: dict[str, StageResult] = field(default_factory=dict)
    pool: Any = None  # the data.unlabeled ImagePool, built on first use
    modality: Any = None  # the data's mentor.Modality, built on first use


def _cross_entropy_step(model: nn.Module, label_smoothing: float):
    def step(x: torch.Tensor, y: torch.Tensor):
        logits, y = flatten_positions(model(x), y)  # per token: the positions that count
        if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: the loss in float32
            logits = logits.float()
        accuracy = (logits.detach().argmax(1) == y).float().mean()  # train/accuracy, on the augmented batch
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), {"accuracy": accuracy}

    return step


class StageRecorder:
    """Where a fit's records go (``mentor.engine.loop.Recorder``): the stage's MLflow run, its epochs
    1-based after ``step_offset``, each phase's steps on an axis of its own, and the lifecycle hook
    ``on_epoch_end`` (whose callback may stop the stage: ``ctx.stop_stage``)."""

    def __init__(self, ctx: StageContext, phase: str | None, step_offset: int):
        self.ctx, self.step_offset = ctx, step_offset
        self.steps_key = f"step/{phase}/" if phase else "step/"  # phases differ in length

    def relog(self, epoch: int, metrics: dict[str, float]) -> None:
        self.ctx.tracker.log_metrics(self.ctx.run_id, {k: v for k, v in metrics.items() if k != "epoch"},
                                     step=self.step_offset + epoch + 1)  # epochs are 1-based in MLflow

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> str | None:
        self.relog(epoch, metrics)
        self.ctx.hook.on_epoch_end(stage=self.ctx.stage, ctx=self.ctx, epoch=epoch, metrics=metrics)
        return self.ctx.stop_reason

    def step_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.ctx.tracker.log_metrics(self.ctx.run_id, {self.steps_key + k: v for k, v in metrics.items()}, step=step)

    def flush(self) -> None:
        self.ctx.tracker.flush()


class StageContext(ModelBuilding, DataAndCaches, Recording):
    """Everything a method's runner may use; handed to it by the pipeline.

    A front over three parts, each a module of its own: building models, losses and selections
    (``ModelBuilding``, context_models.py), the data and what is computed from it, caches included
    (``DataAndCaches``, context_data.py), and recording to the stage's run and the terminal (``Recording``,
    context_recording.py). What is here is the stage itself and the one training loop, ``fit``."""

    def __init__(self, state: RunState, index: int):
        self.state = state
        self.index = index
        self.experiment = state.experiment
        self.stage = state.experiment.stages[index]
        self.splits: StageData = state.splits.for_methods()  # no hidden labels in here
        self.info: DataInfo = state.splits.info
        self.runtime: Runtime = state.runtime
        self.device: torch.device = state.runtime.device
        self.registry = state.registry
        self.hook = state.hook
        self.seed: int = self.stage.seed if self.stage.seed is not None else self.experiment.seed
        self.dir: Path = state.run_dir / self.stage.name
        if not self.dir.resolve().is_relative_to(state.run_dir.resolve()):  # names are checked; never trust
            raise ValueError(f"stage folder {self.dir} is outside the run's folder {state.run_dir}")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_id: str = ""  # the stage's MLflow run, set by the pipeline
        self._inputs: dict[str, ModelInput] = {}
        self._recorded_inputs: set[str] = set()

    @property
    def tracker(self):
        return self.state.tracker

    @property
    def results(self) -> dict[str, StageResult]:
        """The results of the stages that finished before this one."""
        return self.state.results

    def stop_stage(self, reason: str) -> None:
        """End the current training loop after this epoch (a callback's early stop): the fit returns its
        kept weights as usual, the stage finishes and the run goes on. ``reason`` becomes the stage run's
        ``mentor.stopped_early`` tag. A resumed run does not train the stopped loop further."""
        self.stop_reason = str(reason) or "stopped by a callback"

    def config_error(self, path: tuple, message: str) -> ConfigError:
        """An error about the experiment file found at run time, located like ``mentor validate``'s
        (file:line:col and dotted path); the CLI reports it with exit code 2."""
        return located_error(self.experiment, path, message)

    def supervised_task(self, model: nn.Module, cfg: TrainingConfig | None = None) -> TrainTask:
        """Cross-entropy on the labeled split (``cfg``'s ``train_subset`` and label smoothing)."""
        cfg = cfg or self.stage
        return TrainTask(model=model, step=_cross_entropy_step(model, cfg.label_smoothing),
                         data=self.training_data(cfg))

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
        folder = self.dir / phase if phase else self.dir
        done = folder / "phase.json"
        if phase and done.is_file():
            result = StageResult.load(done)
            checkpoint.load_weights(task.model, checkpoint.load(result.weights), result.weights)
            return result

        self.stop_reason = None
        self.describe_fit(task, model_key, phase)

        result: FitResult = fit(
            task, cfg, stage=f"{self.stage.name}/{phase}" if phase else self.stage.name, seed=self.seed,
            info=self.info, eval_sets={"val": self.splits.val, "test": self.splits.test},
            augment=self.augmenter(cfg), runtime=self.runtime,
            checkpoint_path=folder / "checkpoint.pt", recorder=StageRecorder(self, phase, step_offset),
            log_every_steps=self.experiment.tracking.log_every_steps,
        )
        if task.on_end is not None:
            task.on_end()
        if result.stopped:
            print(f"[{self.stage.name}{'/' + phase if phase else ''}] stopped after epoch "
                  f"{len(result.history)} of {cfg.epochs}: {result.stopped}", file=sys.stderr)
            self.tracker.set_tags(self.run_id, {"mentor.stopped_early": result.stopped})
            self.tracker.log_metrics(self.run_id, {"stopped.epoch": float(len(result.history))})
        weights = folder / "final.pt"
        model = getattr(task.model, "_orig_mod", task.model)  # its pipeline stays: the figures score it as used
        if cfg.keep == "best" and result.best_state is not None:  # the weights the best.* metrics measured
            checkpoint.load_weights(model, result.best_state, f"best epoch of {self.stage.name}")
        kept = result.best if cfg.keep == "best" and result.best_state is not None else result.last
        epochs = {"best": result.best, "last": result.last, "kept": kept}
        summary = {summary_name(kind, k): e[k] for kind, e in epochs.items() for k in SUMMARY_KEYS if k in e}
        if "epoch" in result.best:
            summary["best.epoch"] = step_offset + result.best["epoch"] + 1  # 1-based, as logged and printed
        if "epoch" in kept:
            summary["kept.epoch"] = step_offset + kept["epoch"] + 1
        outcome = StageResult(self.stage.name, self.stage.kind, model_key, str(weights), summary, result.history)
        if distributed.is_main():
            checkpoint.save_atomic({k: v.cpu() for k, v in model.state_dict().items()}, weights)
            from .pool_scores import weights_sha256

            logged, digest = folder / "logged.json", weights_sha256(model)
            if not logged.is_file() or json.loads(logged.read_text()).get("weights_sha256") != digest:
                # once per kept weights: a stage resumed after this point (killed before it finished)
                # must not log its summary and model a second time
                self.tracker.log_metrics(self.run_id, summary, step=step_offset + cfg.epochs)
                self._log_artifacts(model, model_key, result, weights, f"{phase}/" if phase else "", export)
                self.tracker.flush()
                checkpoint.write_text_atomic(json.dumps({"weights_sha256": digest}), logged)
            if phase:
                outcome.save(done)
        distributed.barrier()  # the other ranks may read final.pt from here on
        return outcome

    def _teacher_reference(self) -> dict[str, float]:
        """The teacher stage's kept test accuracy, drawn on a student's curves (a stage-trained teacher only)."""
        teacher = getattr(self.stage, "teacher", None)
        result = self.results.get(teacher) if isinstance(teacher, str) else None
        value = result.metrics.get("kept.test.accuracy", result.metrics.get("best.test.accuracy")) if result else None
        return {f"teacher ({teacher}) test/accuracy": value} if value is not None else {}

    def _log_artifacts(self, model: nn.Module, model_key: str, result: FitResult, weights: Path,
                       prefix: str, export: bool) -> None:
        from .tracking import plots

        self.log_figure(plots.learning_curves(result.history, self._teacher_reference()),
                        f"{prefix}plots/learning_curves.png")
        self.log_confusion_matrix(model, f"{prefix}plots/confusion_matrix.png")
        self.tracker.log_file(self.run_id, weights, f"{prefix}checkpoints")
        if export:
            self.log_model(model, model_key)

    def log_model(self, model: nn.Module, model_key: str) -> None:
        """``model`` as an MLflow model of this stage's run, ``<stage>-<key>``, as it ships (its own input
        pipeline's record in its metadata), when ``tracking.log_model`` is on: what ``mentor predict <run id>``,
        ``runs:/`` URIs and the registry use. ``fit`` does it for the model a stage trains; a stage that uses a
        model as it is (``evaluate``) calls it itself."""
        if not self.experiment.tracking.log_model:
            return
        shipped, pipeline = bare(model), self.model_input(model_key)
        device = next(shipped.parameters(), torch.zeros(())).device
        example = self.example(self.splits.test, pipeline=pipeline).numpy() if len(self.splits.test) else None
        from .deploy.preprocess import KEY

        self.tracker.log_model(self.run_id, shipped.float().cpu().eval(), f"{self.stage.name}-{model_key}",
                               example, metadata={KEY: pipeline.record(self.info).to_dict()})
        model.to(device)

    def log_confusion_matrix(self, model: nn.Module, artifact_file: str = "plots/confusion_matrix.png") -> None:
        """The confusion matrix of ``model`` on the test split, as a figure artifact (none for an empty split)."""
        from .tracking import plots

        if not len(self.splits.test):
            return
        test = Batches(self.splits.test, 1024, shuffle=False, mean=self.info.mean, std=self.info.std,
                       device=self.device)
        y, p = predict(model, test, self.runtime)
        cm = plots.confusion_matrix(y, p, self.info.num_classes)
        self.log_figure(plots.confusion_matrix_figure(cm, list(self.info.class_names) or None), artifact_file)

    # -- diagnostics the core computes (methods never hold the hidden labels) --------
