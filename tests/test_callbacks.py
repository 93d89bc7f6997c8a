"""Callbacks in the experiment file: early_stopping ends a stage (not the run), validated, listed, resumable."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

from mentor import hookimpl
from mentor.config import ConfigError, validate_document
from mentor.config.document import Document
from mentor.pipeline import run_experiment
from mentor.tracking.store import tracking_uri


def config(tiny_config, callbacks, epochs=6):
    c = dict(tiny_config)
    c["tracking"] = {"log_model": False}
    c["callbacks"] = callbacks
    c["stages"] = [
        {"name": "teacher", "kind": "train", "model": "teacher", "epochs": epochs, "batch_size": 32},
        {"name": "after", "kind": "train", "model": "student", "epochs": 2, "batch_size": 32},
    ]
    return c


def stage_runs(client):
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    return {r.data.tags["mentor.stage"]: r for r in runs if r.data.tags.get("mentor.kind") == "stage"}


@pytest.mark.slow
def test_early_stopping_ends_the_stage_keeps_its_best_epoch_and_the_run_goes_on(workdir, plugins, tiny_config):
    # no change can beat min_delta 10: the first evaluation is the best, two more end the loop (epochs 1-3 of 6)
    stop = {"name": "early_stopping", "params": {"patience": 2, "min_delta": 10.0, "stages": ["teacher"]}}
    results = run_experiment(validate_document(Document("t", config(tiny_config, [stop])), plugins.registry),
                             plugins)
    assert len(results["teacher"].history) == 3
    m = results["teacher"].metrics  # the kept weights: the best epoch's (by select_on) among the three trained
    assert m["kept.epoch"] == m["best.epoch"] <= 3  # 1-based
    assert len(results["after"].history) == 2  # the next stage is not watched and runs in full
    client = MlflowClient(tracking_uri())
    runs = stage_runs(client)
    assert runs["teacher"].info.status == "FINISHED" and runs["after"].info.status == "FINISHED"
    tag = runs["teacher"].data.tags["mentor.stopped_early"]
    assert "val/accuracy did not improve" in tag and "2 evaluations" in tag
    assert runs["teacher"].data.metrics["stopped.epoch"] == 3
    assert "mentor.stopped_early" not in runs["after"].data.tags
    parent = next(r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
                  if r.data.tags.get("mentor.kind") == "experiment")
    params = parent.data.params  # recorded with the run's config, defaults filled in
    assert params["callbacks.0.name"] == "early_stopping" and params["callbacks.0.params.patience"] == "2"
    assert params["callbacks.0.params.metric"] == "val/accuracy"


@pytest.mark.slow
def test_a_stopped_loop_stays_stopped_when_its_run_resumes(workdir, plugins, tiny_config):
    """Killed right after the early stop (before the stage's result was written): --resume does not train on."""
    import mentor.context

    stop = {"name": "early_stopping", "params": {"patience": 1, "min_delta": 10.0, "stages": ["teacher"]}}
    experiment = validate_document(Document("t", config(tiny_config, [stop])), plugins.registry)
    real = mentor.context.StageContext.fit

    def fit_then_die(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        if self.stage.name == "teacher":
            raise KeyboardInterrupt
        return result

    mentor.context.StageContext.fit = fit_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            run_experiment(experiment, plugins)
    finally:
        mentor.context.StageContext.fit = real
    [state] = workdir.glob("mlruns/checkpoints/tiny/*/teacher/checkpoint.pt")
    assert "early_stopping" in torch.load(state, weights_only=False)["stopped"]
    from mentor.pipeline import ExperimentRunner

    results = ExperimentRunner(experiment, plugins).run(resume=True)
    assert len(results["teacher"].history) == 2  # epochs 1 and 2, as before the kill; no epoch 3..6


class Recorder:
    """A third-party callback: the same mechanism, its own params."""

    seen: list = []

    def __init__(self, label: str):
        self.label = label

    @hookimpl
    def on_stage_end(self, stage, ctx, result):
        Recorder.seen.append((self.label, stage.name))


class RecorderPlugin:
    @hookimpl
    def register_callbacks(self, register):
        from mentor import Params

        class RecorderParams(Params):
            label: str

        register("recorder", Recorder, params=RecorderParams, description="records stage ends")


@pytest.mark.slow
def test_a_third_party_callback_is_built_with_its_params_and_unregistered_after_the_run(workdir, tiny_config):
    from mentor.plugins import load_plugins

    from .conftest import SyntheticData

    plugins = load_plugins(extra=[SyntheticData(), RecorderPlugin()])
    assert plugins.registry.get("callback", "recorder").package == "<in-process>"
    Recorder.seen = []
    c = config(tiny_config, [{"name": "recorder", "params": {"label": "x"}}], epochs=1)
    run_experiment(validate_document(Document("t", c), plugins.registry), plugins)
    assert Recorder.seen == [("x", "teacher"), ("x", "after")]
    assert not [p for p in plugins.manager.get_plugins() if isinstance(p, Recorder)]


@pytest.mark.parametrize(("callback", "message"), [
    ({"name": "early_stoping"}, "did you mean 'early_stopping'"),
    ({"name": "early_stopping", "params": {"patience": 0}}, "greater than or equal to 1"),
    ({"name": "early_stopping", "params": {"mode": "up"}}, "'max' or 'min'"),
])
def test_bad_callbacks_are_located_errors(tiny_config, plugins, callback, message):
    with pytest.raises(ConfigError) as info:
        validate_document(Document("t", config(tiny_config, [callback])), plugins.registry)
    assert message in str(info.value) and "callbacks" in str(info.value)
