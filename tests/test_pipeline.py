"""End to end: runs, metrics and artifacts land in MLflow; interrupted runs resume exactly."""

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from mentor import hookimpl
from mentor.config import ConfigError, load_experiment, validate_document
from mentor.config.document import Document
from mentor.engine.checkpoint import CheckpointError
from mentor.pipeline import ExperimentRunner, NothingToResume, run_experiment
from mentor.plugins import load_plugins
from mentor.tracking.compare import leaderboard
from mentor.tracking.tracker import fluent_tracking_uri

from .conftest import SyntheticData

FASHION = Path(os.environ.get("MENTOR_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def experiment(config, plugins):
    return validate_document(Document("test", config), plugins.registry)


def client(workdir: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlruns/mlflow.db")


def runs_by_stage(c: MlflowClient, name: str):
    exp = c.get_experiment_by_name(name)
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mentor.kind") == "experiment"]
    stages = {r.data.tags["mentor.stage"]: r for r in runs if r.data.tags.get("mentor.kind") == "stage"}
    return parents, stages


@pytest.mark.slow
def test_tiny_run_lands_in_mlflow(workdir, plugins, tiny_config):
    results = run_experiment(experiment(tiny_config, plugins), plugins)
    c = client(workdir)
    parents, stages = runs_by_stage(c, "tiny")
    assert len(parents) == 1 and set(stages) == {"teacher", "student"}
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mentor.device"] == "cpu"
    assert len(parent.data.tags["mentor.config_hash"]) == 16
    # the resolved config, flattened, defaults included
    assert parent.data.params["stages.1.losses.1.params.temperature"] == "2.0"
    assert parent.data.params["stages.0.optimizer.momentum"] == "0.9"
    assert "config.yaml" in [a.path for a in c.list_artifacts(parent.info.run_id)]

    student = stages["student"]
    assert student.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert student.data.tags["mentor.method"] == "distill"
    assert student.info.status == "FINISHED"
    history = c.get_metric_history(student.info.run_id, "val/accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3]  # epochs are 1-based, as the terminal counts
    for key in ("train/loss", "train/loss/kd", "test/accuracy", "lr", "throughput"):
        assert len(c.get_metric_history(student.info.run_id, key)) == 3, key
    metrics = student.data.metrics
    assert metrics["last.test.accuracy"] == results["student"].metrics["last.test.accuracy"]
    assert metrics["best.val.accuracy"] == max(m.value for m in history)
    assert parent.data.metrics["student/last.test.accuracy"] == metrics["last.test.accuracy"]

    artifacts = {a.path for a in c.list_artifacts(student.info.run_id, "plots")}
    assert artifacts == {"plots/learning_curves.png", "plots/confusion_matrix.png"}
    assert [a.path for a in c.list_artifacts(student.info.run_id, "checkpoints")] == ["checkpoints/final.pt"]

    # the final student as an MLflow model that predicts like the saved weights
    with fluent_tracking_uri(c.tracking_uri):
        models = mlflow.search_logged_models(experiment_ids=[parent.info.experiment_id], output_format="list")
        logged = {m.source_run_id: m for m in models}
        assert set(logged) == {student.info.run_id, stages["teacher"].info.run_id}
        loaded = mlflow.pytorch.load_model(f"models:/{logged[student.info.run_id].model_id}").eval()
    x = torch.randn(3, 1, 8, 8)
    plugins_model = load_plugins(extra=[SyntheticData()]).registry.get("model", "small_cnn")
    fresh = plugins_model.factory(4, 1, channels=[4], hidden=0, dropout=0.0, pool_size=1).eval()
    fresh.load_state_dict(torch.load(results["student"].weights, weights_only=True))
    assert torch.allclose(loaded(x), fresh(x), atol=1e-6)

    board = leaderboard("tiny", tracking_uri=c.tracking_uri)
    assert set(board["stage"].to_list()) == {"teacher", "student"}


class StopAt:
    """A plugin that interrupts a run like Ctrl-C after a given epoch of a stage."""

    def __init__(self, stage, epoch):
        self.stage, self.epoch = stage, epoch

    @hookimpl
    def on_epoch_end(self, stage, ctx, epoch, metrics):
        if stage.name == self.stage and epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_runs_can_be_told_apart_in_the_mlflow_ui(workdir, tiny_config, write_yaml):
    """Run names carry the seed and the --set overrides (or a short config hash); the file's description
    is the run's note; user, source and commit are recorded as MLflow's clients record them."""
    tiny_config["description"] = "a tiny run to tell apart"
    path = write_yaml(tiny_config)
    plugins = load_plugins(extra=[SyntheticData()])
    runner = ExperimentRunner(load_experiment(path, ["stages[1].epochs=1"], plugins.registry), plugins)
    runner.run()
    c = client(workdir)
    [parent], stages = runs_by_stage(c, "tiny")
    assert parent.info.run_name == "tiny · seed 0 · stages[1].epochs=1"
    assert stages["student"].info.run_name == "student · seed 0 · stages[1].epochs=1"
    tags = parent.data.tags
    assert tags["mlflow.note.content"] == "a tiny run to tell apart"
    assert tags["mlflow.source.name"] == str(path) and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"]
    assert tags.get("mlflow.source.git.commit") == tags["mentor.git_commit"] or tags["mentor.git_commit"] == "unknown"
    assert stages["student"].data.tags["mlflow.note.content"].startswith("stage student (distill: ")

    plain = ExperimentRunner(load_experiment(path, registry=plugins.registry), plugins)
    assert plain.run_name() == f"tiny · seed 0 · {plain.hash[:7]}"


@pytest.mark.slow
def test_resume_after_interruption_matches_an_uninterrupted_run(workdir, tiny_config, monkeypatch):
    plugins = load_plugins(extra=[SyntheticData()])
    tiny_config["stages"][1]["augment"] = {"crop_padding": 1, "flip": True}
    tiny_config["models"]["student"]["params"]["dropout"] = 0.2
    reference = run_experiment(experiment(tiny_config, plugins), plugins)

    other = workdir / "second"
    other.mkdir()
    monkeypatch.chdir(other)
    stopping = load_plugins(extra=[SyntheticData(), StopAt("student", 1)])
    with pytest.raises(KeyboardInterrupt):
        run_experiment(experiment(tiny_config, stopping), stopping)
    c = client(other)
    parents, stages = runs_by_stage(c, "tiny")
    assert parents[0].info.status == "KILLED"
    assert stages["student"].info.status == "KILLED"
    assert stages["teacher"].info.status == "FINISHED"

    resumed = run_experiment(experiment(tiny_config, plugins), plugins, resume=True)

    def without_timing(history):
        return [{k: v for k, v in epoch.items() if k != "throughput"} for epoch in history]

    assert len(resumed["student"].history) == 3
    assert without_timing(resumed["student"].history) == without_timing(reference["student"].history)
    assert resumed["student"].metrics == reference["student"].metrics
    parents, stages = runs_by_stage(c, "tiny")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(c.search_runs([parents[0].info.experiment_id])) == 3  # nothing ran twice
    steps = [m.step for m in c.get_metric_history(stages["student"].info.run_id, "val/accuracy")]
    assert sorted(steps) == [1, 2, 3]

    with pytest.raises(NothingToResume):
        run_experiment(experiment(tiny_config, plugins), plugins, resume=True)


@pytest.mark.slow
def test_resume_by_id_is_explicit(workdir, tiny_config):
    """--resume RUN_ID continues only that experiment's unfinished run of this configuration: an unknown
    id, a stage's run, a changed config and a finished run are each refused with a message that says why
    (and what to do); --resume-changed continues a changed one."""
    stopping = load_plugins(extra=[SyntheticData(), StopAt("student", 0)])
    with pytest.raises(KeyboardInterrupt):
        run_experiment(experiment(tiny_config, stopping), stopping)
    c = client(workdir)
    [parent], stages = runs_by_stage(c, "tiny")
    parent_id = parent.info.run_id
    plugins = load_plugins(extra=[SyntheticData()])

    def refused(config, run_id, **kwargs) -> str:
        with pytest.raises(NothingToResume) as err:
            run_experiment(experiment(config, plugins), plugins, resume=True, resume_run_id=run_id, **kwargs)
        return str(err.value)

    assert refused(tiny_config, "0" * 32).startswith(f"no run {'0' * 32} in sqlite:///")
    message = refused(tiny_config, stages["teacher"].info.run_id)
    assert f"of run {parent_id}: resume that one (mentor run FILE --resume {parent_id})" in message
    changed = copy.deepcopy(tiny_config)
    changed["stages"][1]["epochs"] = 4
    message = refused(changed, parent_id)
    assert "another configuration (stages.1.epochs: 3 -> 4)" in message and "--resume-changed" in message
    assert c.get_run(parent_id).info.status == "KILLED"  # a refusal leaves the run as it was

    resumed = run_experiment(experiment(changed, plugins), plugins, resume=True, resume_run_id=parent_id,
                             resume_changed=True)
    assert len(resumed["student"].history) == 4
    run = c.get_run(parent_id)
    assert run.info.status == "FINISHED" and run.data.tags["mentor.resumed_changed"] == "true"
    assert refused(changed, parent_id).endswith("finished: nothing to resume (run without --resume for a new run)")


def test_unwritable_checkpoint_dir_is_a_located_error_before_any_run(workdir, tiny_config, write_yaml):
    (workdir / "a-file").write_text("not a folder")
    tiny_config["tracking"]["checkpoint_dir"] = "a-file/checkpoints"
    path = write_yaml(tiny_config)
    plugins = load_plugins(extra=[SyntheticData()])
    with pytest.raises(ConfigError) as err:
        run_experiment(load_experiment(path, registry=plugins.registry), plugins)
    [problem] = err.value.problems
    assert (problem.source, problem.path) == (str(path), "tracking.checkpoint_dir")
    assert problem.message.startswith("cannot write the run's resume state under a-file/checkpoints/tiny: ")
    runs = client(workdir).search_runs([e.experiment_id for e in client(workdir).search_experiments()])
    assert [r.info.status for r in runs] == []  # no run opened, none left RUNNING


@pytest.mark.slow
def test_a_second_interrupt_while_runs_end_still_ends_them(workdir, tiny_config, monkeypatch):
    """Ctrl-C, then Ctrl-C again while mentor is closing its MLflow runs: both still end KILLED."""
    from mentor.tracking.tracker import Tracker

    end_run = Tracker.end_run

    def interrupted_again(self, run_id, status="FINISHED"):
        if status == "KILLED":  # closing after the first Ctrl-C: the second arrives now
            os.kill(os.getpid(), signal.SIGINT)
        end_run(self, run_id, status)

    monkeypatch.setattr(Tracker, "end_run", interrupted_again)
    plugins = load_plugins(extra=[SyntheticData(), StopAt("student", 0)])
    with pytest.raises(KeyboardInterrupt):
        run_experiment(experiment(tiny_config, plugins), plugins)
    parents, stages = runs_by_stage(client(workdir), "tiny")
    assert parents[0].info.status == "KILLED"
    assert stages["student"].info.status == "KILLED"


@pytest.mark.slow
def test_corrupt_checkpoint_is_a_located_error(workdir, tiny_config):
    plugins = load_plugins(extra=[SyntheticData(), StopAt("student", 0)])
    with pytest.raises(KeyboardInterrupt):
        run_experiment(experiment(tiny_config, plugins), plugins)
    [path] = list(Path("mlruns/checkpoints/tiny").glob("*/student/checkpoint.pt"))
    path.write_bytes(b"not a checkpoint")
    plugins = load_plugins(extra=[SyntheticData()])
    with pytest.raises(CheckpointError, match=str(path)):
        ExperimentRunner(experiment(tiny_config, plugins), plugins).run(resume=True)


def mentor(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "mentor.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300, check=False)


@pytest.mark.slow
def test_missing_dataset_fails_cleanly_without_a_run(workdir, write_yaml):
    path = write_yaml({
        "name": "nodata", "data": {"source": "fashion_mnist", "params": {"root": str(workdir / "none")}},
        "models": {"m": {"name": "small_cnn"}}, "stages": [{"kind": "train", "model": "m"}],
    })
    result = mentor("run", str(path), cwd=workdir, env={"MENTOR_FASHION_MNIST_DIR": str(workdir / "empty")})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "apt-get install dataset-fashion-mnist" in result.stderr
    assert not (workdir / "mlruns" / "checkpoints").exists()


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist absent")
@pytest.mark.slow
def test_cli_run_then_compare_on_fashion_mnist(workdir, write_yaml):
    path = write_yaml({
        "name": "fm-cli", "data": {"source": "fashion_mnist", "val_size": 200, "test_size": 500},
        "models": {"t": {"name": "small_cnn"}, "s": {"name": "small_cnn", "params": {"channels": [4]}}},
        "stages": [
            {"name": "teacher", "kind": "train", "model": "t", "train_subset": 500, "epochs": 1},
            {"name": "kd", "kind": "distill", "teacher": "teacher", "student": "s", "train_subset": 200,
             "epochs": 1},
        ],
        "tracking": {"log_model": False},
    })
    run = mentor("run", str(path), "--set", "stages[1].epochs=2", cwd=workdir, env={"CI": "1"})
    assert run.returncode == 0, run.stderr
    assert "[kd] epoch 2/2" in run.stdout
    compare = mentor("compare", "fm-cli", "--format", "json", cwd=workdir)
    assert compare.returncode == 0, compare.stderr
    rows = json.loads(compare.stdout)
    assert {r["stage"] for r in rows} == {"teacher", "kd"}
    assert all(0 <= r["value"] <= 1 for r in rows)
    missing = mentor("compare", "fm-clj", cwd=workdir)
    assert missing.returncode != 0 and "did you mean 'fm-cli'" in missing.stderr


@pytest.mark.slow
def test_eval_every_evaluates_on_schedule_and_selects_among_evaluated_epochs(workdir, plugins, tiny_config):
    tiny_config["stages"][1]["epochs"] = 5
    tiny_config["stages"][1]["eval_every"] = 2
    tiny_config["tracking"]["log_model"] = False
    results = run_experiment(experiment(tiny_config, plugins), plugins)
    history = results["student"].history
    assert [("val/accuracy" in epoch) for epoch in history] == [False, True, False, True, True]
    assert all("train/loss" in epoch for epoch in history)
    c = client(workdir)
    _, stages = runs_by_stage(c, "tiny")
    steps = sorted(m.step for m in c.get_metric_history(stages["student"].info.run_id, "test/accuracy"))
    assert steps == [2, 4, 5]
    assert results["student"].metrics["best.epoch"] in (2, 4, 5)


@pytest.mark.slow
def test_a_run_with_data_on_the_host_equals_the_resident_run(workdir, plugins, tiny_config):
    """engine.data_placement: host (DataLoader workers) changes where batches are cut, not what they are."""
    resident = run_experiment(experiment(tiny_config, plugins), plugins)
    tiny_config["engine"].update(data_placement="host", loader_workers=2)
    host = run_experiment(experiment(tiny_config, plugins), plugins)
    for stage in ("teacher", "student"):
        assert host[stage].metrics == resident[stage].metrics
        strip = [{k: v for k, v in e.items() if k != "throughput"} for e in host[stage].history]
        assert strip == [{k: v for k, v in e.items() if k != "throughput"} for e in resident[stage].history]
