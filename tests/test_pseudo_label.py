"""Pseudo-labelling end to end on synthetic data: diagnostics in MLflow, hidden labels hidden."""

import io
from pathlib import Path

import polars as pl
import pytest
from mlflow import MlflowClient

from mentor import hookimpl
from mentor.config import load_experiment, validate_document
from mentor.config.document import Document
from mentor.config.schema import TrainingStageConfig
from mentor.pipeline import run_experiment
from mentor.plugins import load_plugins

from .conftest import SyntheticData


def ssl_config(tiny_config, **stage):
    config = dict(tiny_config)
    config["name"] = "ssl"
    config["data"] = {"source": "synthetic", "params": {"train_size": 600}, "val_size": 80, "labeled_per_class": 10}
    config["tracking"] = {"log_model": False}
    config["stages"] = [
        {"name": "teacher", "kind": "train", "model": "teacher", "epochs": 3, "batch_size": 16,
         "optimizer": {"lr": 0.05}},
        {"name": "pl", "kind": "pseudo_label", "teacher": "teacher", "student": "student", "epochs": 2,
         "batch_size": 32, "top_p": 2, "selection": {"name": "top_k_per_class", "params": {"k": 50}}, **stage},
    ]
    return config


@pytest.mark.slow
def test_pseudo_label_then_finetune_records_diagnostics(workdir, plugins, tiny_config):
    config = ssl_config(tiny_config, finetune={"epochs": 1, "batch_size": 16})
    results = run_experiment(validate_document(Document("t", config), plugins.registry), plugins)
    history = results["pl"].history
    assert len(history) == 1  # the fine-tune phase's epochs (the result of the last phase)

    c = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    exp = c.get_experiment_by_name("ssl")
    runs = c.search_runs([exp.experiment_id])
    stage = next(r for r in runs if r.data.tags.get("mentor.kind") == "stage" and r.data.tags["mentor.stage"] == "pl")
    [round1] = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == stage.info.run_id]
    assert round1.data.tags["mentor.round"] == "1"
    m = round1.data.metrics
    # 4 classes x top 50 each, from 480 unlabeled images (600 - 80 val - 40 labeled)
    assert m["pseudo/selected_rows"] == 200
    assert m["pseudo/coverage"] == pytest.approx(m["pseudo/selected_images"] / 480)
    assert m["pseudo/selected_images"] <= 200
    assert 0 <= m["pseudo/precision"] <= 1
    # the epoch axis continues from pre-training into fine-tuning
    steps = sorted(x.step for x in c.get_metric_history(round1.info.run_id, "val/accuracy"))
    assert steps == [1, 2, 3]  # 1-based epochs
    assert stage.data.metrics["last.test.accuracy"] == results["pl"].metrics["last.test.accuracy"]

    paths = {a.path for a in c.list_artifacts(round1.info.run_id, "pseudo_labels")}
    assert {"pseudo_labels/selected.parquet", "pseudo_labels/per_class.parquet",
            "pseudo_labels/confidence.png"} <= paths
    local = c.download_artifacts(round1.info.run_id, "pseudo_labels/selected.parquet", str(workdir))
    selected = pl.read_parquet(local)
    assert selected.columns == ["index", "label", "prob", "rank", "class_name"] and len(selected) == 200
    # each row's class by its name too, a table a person joins back (the test's source names them a, b, c, d)
    assert selected["class_name"].to_list() == ["abcd"[label] for label in selected["label"].to_list()]
    per_class = pl.read_parquet(c.download_artifacts(round1.info.run_id, "pseudo_labels/per_class.parquet",
                                                     str(workdir)))
    assert per_class["selected"].sum() == 200
    assert abs(per_class["correct"].sum() / 200 - m["pseudo/precision"]) < 1e-9
    inputs = c.get_run(round1.info.run_id).inputs.dataset_inputs
    # the selection, and the rows each phase trained on (pre-training: the selected rows; then the labeled)
    assert sorted(i.dataset.name for i in inputs) == ["pl-pseudo-labels-round1", "pl-round1/finetune.train",
                                                      "pl-round1/train.train"]


@pytest.mark.slow
def test_noisy_student_rounds_are_nested_runs(workdir, plugins, tiny_config):
    config = ssl_config(tiny_config, mode="joint", unlabeled_ratio=2, rounds=2, labels="soft",
                        selection={"name": "balanced", "params": {"per_class": 30}},
                        augment={"randaugment": {"num_ops": 1, "magnitude": 5}, "flip": True})
    config["models"]["student"]["params"]["dropout"] = 0.2
    run_experiment(validate_document(Document("t", config), plugins.registry), plugins)
    c = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    runs = c.search_runs([c.get_experiment_by_name("ssl").experiment_id])
    rounds = sorted(r.data.tags["mentor.round"] for r in runs if "mentor.round" in r.data.tags)
    assert rounds == ["1", "2"]
    for r in runs:
        if "mentor.round" in r.data.tags:
            m = r.data.metrics  # balanced: exactly per_class rows for every class the teacher predicts
            assert m["pseudo/selected_rows"] == 30 * m["pseudo/classes_covered"] > 0
            assert r.info.status == "FINISHED"


class Spy:
    """A method that records what a stage context exposes about the unlabeled split."""

    seen = {}

    class Config(TrainingStageConfig):
        pass

    @hookimpl
    def register_methods(self, register):
        def look(stage, ctx):
            unlabeled = ctx.splits.unlabeled
            Spy.seen = {
                "attributes": set(vars(unlabeled)), "n": len(unlabeled),
                "reveal": hasattr(ctx.splits, "reveal_labels"),
            }
            from mentor import StageResult

            return StageResult(stage.name, stage.kind)

        register("spy", look, params=Spy.Config)


def test_hidden_labels_never_reach_a_method(workdir, tiny_config):
    plugins = load_plugins(extra=[SyntheticData(), Spy()])
    config = ssl_config(tiny_config)
    config["stages"] = [{"kind": "spy"}]
    run_experiment(validate_document(Document("t", config), plugins.registry), plugins)
    assert Spy.seen == {"attributes": {"images", "index"}, "n": 480, "reveal": False}


@pytest.mark.slow
def test_empty_unlabeled_split_is_a_clear_error(workdir, plugins, tiny_config):
    config = ssl_config(tiny_config)
    config["data"].pop("labeled_per_class")
    with pytest.raises(ValueError, match="unlabeled split is empty"):
        run_experiment(validate_document(Document("t", config), plugins.registry), plugins)


def test_parquet_roundtrip_of_scores_schema():
    from mentor import SCORES_SCHEMA

    frame = pl.DataFrame({"index": [1], "rank": [0], "class": [2], "prob": [0.5]}, schema=SCORES_SCHEMA)
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    assert pl.read_parquet(io.BytesIO(buffer.getvalue())).schema == frame.schema


class StopAfter:
    """Interrupts like Ctrl-C at the n-th end of epoch of a stage (any phase)."""

    def __init__(self, stage, calls):
        self.stage, self.calls = stage, calls

    @hookimpl
    def on_epoch_end(self, stage, ctx, epoch, metrics):
        if stage.name == self.stage:
            self.calls -= 1
            if self.calls == 0:
                raise KeyboardInterrupt


@pytest.mark.parametrize("calls", [2, 3], ids=["in-pretrain", "in-finetune"])
@pytest.mark.slow
def test_interrupted_pseudo_label_stage_resumes_to_the_same_result(workdir, tiny_config, monkeypatch, calls):
    config = ssl_config(tiny_config, finetune={"epochs": 2, "batch_size": 16},
                        augment={"randaugment": {"num_ops": 1, "magnitude": 5}})
    plugins = load_plugins(extra=[SyntheticData()])
    reference = run_experiment(validate_document(Document("t", config), plugins.registry), plugins)

    other = workdir / "again"
    other.mkdir()
    monkeypatch.chdir(other)
    stopping = load_plugins(extra=[SyntheticData(), StopAfter("pl", calls)])
    with pytest.raises(KeyboardInterrupt):
        run_experiment(validate_document(Document("t", config), stopping.registry), stopping)
    resumed = run_experiment(validate_document(Document("t", config), plugins.registry), plugins, resume=True)
    assert resumed["pl"].metrics == reference["pl"].metrics
    strip = [{k: v for k, v in e.items() if k != "throughput"} for e in resumed["pl"].history]
    assert strip == [{k: v for k, v in e.items() if k != "throughput"} for e in reference["pl"].history]


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[1] / "experiments" / "cifar10").glob("ssl_*.yaml")),
                         ids=lambda p: p.stem)
@pytest.mark.slow
def test_cifar10_ssl_recipes_run_at_tiny_size(recipe, workdir, plugins):
    overrides = ["data.source=synthetic", "data.params={channels: 3, size: 32, train_size: 120, test_size: 16}",
                 "data.val_size=16", "data.labeled_per_class=4", "tracking.log_model=false",
                 "engine.progress=none", "stages[2].selection.params.per_class=6", "stages[2].rounds=2",
                 "stages[2].selection.params.min_confidence=0"]  # an untrained teacher is not confident
    exp = load_experiment(recipe, overrides, plugins.registry)
    for stage in exp.stages:
        stage.epochs, stage.batch_size = 1, 16
        if getattr(stage, "finetune", None):
            stage.finetune.epochs = 1
    results = run_experiment(exp, plugins)
    assert set(results) == {"supervised", "pl_finetune", "noisy_student"}
    assert all(0 <= r.metrics["last.test.accuracy"] <= 1 for r in results.values())
