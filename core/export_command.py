"""``mentor export <run id> [--stage NAME]``: a finished run's stage exported after the fact.

The run's own ``config.yaml`` rebuilds the experiment (so the data, splits and
models are those the run used); the stage's kept weights come from the run's
state folder, or, when that folder is gone (another machine), from the model
the stage logged in MLflow. Then ``mentor.shipping.export_stage`` does what
``export:`` in the file would have done, into the stage's MLflow run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from .config.document import Document
from .config.loader import stage_model_key, validate_document
from .config.schema import ExportConfig
from .context import StageContext, StageResult
from .engine import checkpoint
from .engine.runtime import choose_runtime
from .pipeline import ExperimentRunner
from .shipping import export_stage
from .tracking.tracker import Tracker


class ExportRunError(Exception):
    """The run or stage to export cannot be found, or holds no model."""


def _stage_runs(tracker: Tracker, parent: str) -> dict[str, str]:
    return {r.data.tags.get("mentor.stage"): r.info.run_id for r in tracker.children(parent)}


def export_run(run_id: str, plugins, *, stage: str | None = None, int8: bool | None = None,
               tracking_uri: str | None = None) -> tuple[str, dict]:
    """Export the kept model of ``stage`` of run ``run_id`` (an experiment's run or a stage's); returns the
    stage's name and the export record."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from .tracking.models import no_download_bar
    from .tracking.store import tracking_uri as resolve_uri

    uri = resolve_uri(tracking_uri)
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ExportRunError(f"no run {run_id} in {uri}") from None
    tags = run.data.tags
    kind = tags.get("mentor.kind")
    if kind == "stage":
        parent, stage = tags["mlflow.parentRunId"], stage or tags.get("mentor.stage")
    elif kind == "experiment":
        parent = run_id
    else:
        raise ExportRunError(f"run {run_id} is not a mentor experiment or stage run")
    tracker = Tracker(client.get_experiment(run.info.experiment_id).name, uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with no_download_bar():  # one small file: a progress bar says nothing
                config = yaml.safe_load(Path(client.download_artifacts(parent, "config.yaml", tmp)).read_text())
        except (MlflowException, OSError):
            raise ExportRunError(f"run {parent} has no config.yaml artifact to rebuild its experiment from") \
                from None
    experiment = validate_document(Document(f"config.yaml of run {parent}", config), plugins.registry)
    with_model = [s.name for s in experiment.stages if stage_model_key(experiment, s) is not None]
    stage = stage or (with_model[-1] if with_model else None)
    if stage not in with_model:
        raise ExportRunError(f"run {parent} has no stage '{stage}' with a model "
                             f"(stages with a model: {', '.join(with_model) or 'none'})")
    index = next(i for i, s in enumerate(experiment.stages) if s.name == stage)
    spec = experiment.stages[index]
    spec.export = (spec.export or ExportConfig()).model_copy(update={} if int8 is None else {"int8": int8})
    runner = ExperimentRunner(experiment, plugins)
    runner.runtime = choose_runtime(experiment.engine)
    runner.splits = runner.load_data()
    runner.tracker = tracker
    runner.run_dir = Path(experiment.tracking.checkpoint_dir) / experiment.name / parent
    state = runner.state()
    ctx = StageContext(state, index)
    stage_run = _stage_runs(tracker, parent).get(stage)
    if stage_run is None:
        raise ExportRunError(f"run {parent} has no MLflow run for stage '{stage}'")
    ctx.run_id = stage_run
    result = _kept_result(ctx, stage, stage_model_key(experiment, spec), stage_run, uri)
    state.results[stage] = result
    status = client.get_run(stage_run).info.status
    try:
        record = export_stage(ctx, result)
    finally:
        tracker.flush()
        tracker.end_run(stage_run, status)  # logging a model reopens the run; leave it as it was
    return stage, record


def _kept_result(ctx: StageContext, stage: str, key: str, stage_run: str, uri: str) -> StageResult:
    """The stage's result from its state folder, else its kept weights from the model it logged."""
    done = ctx.dir / "result.json"
    if done.is_file():
        result = StageResult.load(done)
        if result.weights and Path(result.weights).is_file():
            return result
        if result.weights is None and result.model_key is not None:  # a models entry used as it is (evaluate):
            return result  # its own weights (checkpoint, uri, pretrained) are built with it
    from .tracking.models import ModelNotFound, load_logged_model

    try:
        model = load_logged_model(f"runs:/{stage_run}/{stage}-{key}", uri)
    except ModelNotFound as exc:
        raise ExportRunError(f"stage '{stage}' left no weights in {ctx.dir} and no logged model: {exc}") from None
    weights = ctx.dir / "export" / "weights-from-mlflow.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save_atomic({k: v.cpu() for k, v in model.state_dict().items()}, weights)
    return StageResult(stage, ctx.stage.kind, key, str(weights))
