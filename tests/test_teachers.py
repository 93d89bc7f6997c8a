"""Teachers from outside (checkpoint, MLflow URI, torchvision weights) and the evaluate stage, end to end."""

from __future__ import annotations

import copy
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch
import torch.nn.functional as F
import yaml
from mlflow import MlflowClient

from mentor import summary_name
from mentor.cli import main
from mentor.config import load_experiment
from mentor.pipeline import ExperimentRunner
from mentor_plugins.models.small_cnn import small_cnn

DATA = {"source": "random_images", "val_size": 16,
        "params": {"train_size": 64, "test_size": 24, "num_classes": 4, "channels": 1, "image_size": 8}}
STUDENT = {"name": "small_cnn", "params": {"channels": [4]}}
TEACHER = {"name": "small_cnn", "params": {"channels": [8]}}
DISTILL = {"name": "student", "kind": "distill", "teacher": "teacher", "student": "student", "epochs": 1,
           "batch_size": 16}


def config(teacher: dict, stages: list[dict] | None = None, **models) -> dict:
    return {"name": "ext", "data": copy.deepcopy(DATA),
            "models": {"teacher": teacher, "student": copy.deepcopy(STUDENT), **models},
            "stages": stages or [{"name": "score", "kind": "evaluate", "model": "teacher"}, dict(DISTILL)],
            "engine": {"progress": "none"}, "tracking": {"log_model": False}}


def write(tmp_path: Path, data: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def teacher_weights(seed: int = 1, channels=(8,), classes: int = 4) -> dict:
    torch.manual_seed(seed)
    return small_cnn(classes, 1, channels=list(channels)).state_dict()


def store(workdir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")


def stage_runs(c: MlflowClient, experiment: str = "ext") -> dict:
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id])
    return {r.data.tags["mentor.stage"]: r for r in runs if r.data.tags.get("mentor.kind") == "stage"}


def by_hand(model: torch.nn.Module, path: Path) -> dict[str, float]:
    """Accuracy and mean cross-entropy on val and test, normalised as the data's statistics say."""
    experiment = load_experiment(path)
    splits = ExperimentRunner(experiment).load_data()
    mean, std = splits.info.mean[0], splits.info.std[0]
    model.eval()
    out = {}
    for name, data in (("val", splits.val), ("test", splits.test)):
        with torch.no_grad():
            logits = model((data.images.float() / 255 - mean) / std)
        out[f"{name}/accuracy"] = (logits.argmax(1) == data.labels).float().mean().item()
        out[f"{name}/loss"] = F.cross_entropy(logits, data.labels).item()
    return out


def no_run_left_running(c: MlflowClient) -> bool:
    runs = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]
    return bool(runs) and all(r.info.status != "RUNNING" for r in runs)


# --- checkpoints ----------------------------------------------------------------------


@pytest.mark.slow
def test_state_dict_file_teaches_and_evaluate_matches_a_hand_computation(workdir, capsys):
    folder = workdir / "exp"
    folder.mkdir()
    state = teacher_weights()
    torch.save(state, folder / "teacher.pt")  # relative to the experiment file, not to the working directory
    path = write(folder, config({**TEACHER, "checkpoint": "teacher.pt"}))
    assert main(["run", str(path)]) == 0, capsys.readouterr().err

    runs = stage_runs(store(workdir))
    assert runs["score"].info.status == runs["student"].info.status == "FINISHED"
    metrics = runs["score"].data.metrics
    model = small_cnn(4, 1, channels=[8])
    model.load_state_dict(state)
    expected = by_hand(model, path)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-5)
        assert metrics[summary_name("best", key)] == metrics[summary_name("last", key)] == metrics[key]
    assert metrics["model/parameters"] == sum(p.numel() for p in model.parameters())
    floats = sum(t.numel() for t in state.values() if t.is_floating_point())
    assert metrics["model/size_mb"] == pytest.approx((floats * 4 + sum(
        t.numel() * t.element_size() for t in state.values() if not t.is_floating_point())) / 1e6)
    artifacts = [a.path for a in store(workdir).list_artifacts(runs["score"].info.run_id, "plots")]
    assert "plots/confusion_matrix.png" in artifacts
    assert runs["score"].data.tags["mentor.model"] == "small_cnn"
    assert "best.test.accuracy" in runs["student"].data.metrics


@pytest.mark.slow
def test_mentor_own_final_pt_checkpoint_pt_and_runs_uri_are_the_same_teacher(workdir, capsys):
    first = config(TEACHER, [{"name": "teacher", "kind": "train", "model": "teacher", "epochs": 1,
                              "batch_size": 16}])
    first["name"], first["tracking"]["log_model"] = "first", True
    assert main(["run", str(write(workdir, first, "first.yaml"))]) == 0, capsys.readouterr().err
    trained = stage_runs(store(workdir), "first")["teacher"]
    folder = Path("mlruns/checkpoints/first", trained.data.tags["mlflow.parentRunId"], "teacher").resolve()

    second = config({**TEACHER, "checkpoint": str(folder / "final.pt")}, [
        {"name": "final", "kind": "evaluate", "model": "teacher"},
        {"name": "resume_state", "kind": "evaluate", "model": "resumed"},
        {"name": "logged", "kind": "evaluate", "model": "logged"},
        {**DISTILL, "teacher": "logged"},
    ], resumed={**TEACHER, "checkpoint": str(folder / "checkpoint.pt")},
        logged={"uri": f"runs:/{trained.info.run_id}/teacher-teacher"})
    assert main(["run", str(write(workdir, second))]) == 0, capsys.readouterr().err
    runs = stage_runs(store(workdir))
    trained_accuracy = trained.data.metrics["last.test.accuracy"]
    for name in ("final", "resume_state", "logged"):
        assert runs[name].data.metrics["test/accuracy"] == pytest.approx(trained_accuracy, abs=1e-6)
        assert runs[name].data.metrics["test/loss"] == pytest.approx(
            runs["final"].data.metrics["test/loss"], abs=1e-6)
    assert runs["student"].info.status == "FINISHED"


# --- the model registry ------------------------------------------------------------------


@pytest.mark.slow
def test_registered_model_by_version_and_alias(workdir, capsys):
    uri = f"sqlite:///{workdir}/elsewhere.db"  # tracking.uri: not mentor's default store
    model = small_cnn(4, 1, channels=[8])
    model.load_state_dict(teacher_weights(seed=3))
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run():
            mlflow.pytorch.log_model(model, name="m", serialization_format="pickle",
                                     registered_model_name="ext-teacher")
        MlflowClient(uri).set_registered_model_alias("ext-teacher", "champion", "1")
    finally:
        mlflow.set_tracking_uri(None)
    data = config({"uri": "models:/ext-teacher/1"}, [
        {"name": "by_alias", "kind": "evaluate", "model": "aliased"},
        dict(DISTILL),
    ], aliased={**TEACHER, "uri": "models:/ext-teacher@champion"})  # with name: its state_dict into small_cnn
    data["tracking"]["uri"] = uri
    path = write(workdir, data)
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    runs = stage_runs(MlflowClient(uri))
    expected = by_hand(model, path)
    assert runs["by_alias"].data.metrics["test/accuracy"] == pytest.approx(expected["test/accuracy"], abs=1e-6)
    assert runs["by_alias"].data.metrics["val/loss"] == pytest.approx(expected["val/loss"], abs=1e-5)
    assert runs["student"].info.status == "FINISHED"


# --- pseudo-labelling and MPL with a model-key teacher -------------------------------------


@pytest.mark.slow
def test_pseudo_label_and_mpl_take_a_model_key_teacher(workdir, capsys):
    torch.save(teacher_weights(), workdir / "teacher.pt")
    data = config({**TEACHER, "checkpoint": "teacher.pt"}, [
        {"name": "pl", "kind": "pseudo_label", "teacher": "teacher", "student": "student", "epochs": 1,
         "batch_size": 16, "selection": {"name": "all"}},
        {"name": "mpl", "kind": "mpl", "teacher": "teacher", "student": "student", "epochs": 1, "batch_size": 8,
         "teacher_accuracy_every": 0},
    ])
    data["data"]["labeled_per_class"] = 4
    path = write(workdir, data)
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    runs = stage_runs(store(workdir))
    assert runs["pl"].info.status == runs["mpl"].info.status == "FINISHED"
    # the pseudo-labels came from the checkpoint's model: its agreement with the hidden labels, by hand
    experiment = load_experiment(path)
    splits = ExperimentRunner(experiment).load_data()
    model = small_cnn(4, 1, channels=[8])
    model.load_state_dict(teacher_weights())
    model.eval()
    with torch.no_grad():
        x = (splits.unlabeled.images.float() / 255 - splits.info.mean[0]) / splits.info.std[0]
        agree = (model(x).argmax(1) == splits.unlabeled._hidden_labels).float().mean().item()
    child = next(r for r in store(workdir).search_runs([runs["pl"].info.experiment_id])
                 if r.data.tags.get("mentor.child") == "round1")
    assert child.data.metrics["pseudo/precision"] == pytest.approx(agree, abs=1e-6)


# --- bad input: located, exit 2, no traceback, nothing left RUNNING ---------------------------


@pytest.mark.parametrize("teacher, where, message", [
    (TEACHER, "stages[1].teacher", "models.teacher has no weights: set checkpoint, weights or uri, or name a "
     "stage that trains it"),
    ({**TEACHER, "checkpoint": "t.pt", "uri": "runs:/x/y"}, "models.teacher", "set only one of checkpoint, uri"),
    ({**TEACHER, "checkpoint": "missing.pt"}, "models.teacher.checkpoint", "no such file"),
    ({**TEACHER, "weights": "DEFAULT"}, "models.teacher.weights", "has no pretrained weights"),
])
def test_validate_refuses_a_teacher_without_usable_weights(tmp_path, capsys, teacher, where, message):
    torch.save(teacher_weights(), tmp_path / "t.pt")
    path = write(tmp_path, config(teacher))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:" in err and where in err and message in err and "Traceback" not in err


@pytest.mark.parametrize("teacher, message", [
    ({"uri": "runs:/0123456789abcdef/teacher"}, "models.teacher.uri: runs:/0123456789abcdef/teacher: Run"),
    ({"uri": "models:/nobody/7"}, "models.teacher.uri: models:/nobody/7"),
    ({**TEACHER, "checkpoint": "other.pt"}, "weights do not fit models.small_cnn: 6 keys are not the model's"),
    ({"name": "torchvision", "params": {"arch": "squeezenet1_1"}, "weights": "DEFAULT"},
     "freshly initialised (DEFAULT has 1000 classes, the data 4)"),
])
def test_run_refuses_a_bad_teacher_before_training(workdir, capsys, teacher, message, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(workdir / "torch"))
    import torchvision

    placed = Path(workdir / "torch/hub/checkpoints")
    placed.mkdir(parents=True)
    url = torchvision.models.SqueezeNet1_1_Weights.DEFAULT.url
    torch.save(torchvision.models.squeezenet1_1().state_dict(), placed / url.rsplit("/", 1)[1])
    torch.save(teacher_weights(channels=(4, 4)), workdir / "other.pt")
    path = write(workdir, config(teacher))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (workdir / "mlruns/checkpoints/ext").exists() or not any(
        (workdir / "mlruns/checkpoints/ext").rglob("final.pt"))
    if (workdir / "mlruns/mlflow.db").exists():  # validation may stop it before any run is recorded
        assert no_run_left_running(store(workdir))


@pytest.mark.slow
def test_a_teacher_with_other_classes_and_a_failed_download_are_located(workdir, capsys, monkeypatch):
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlruns/mlflow.db")
    try:
        with mlflow.start_run() as run:
            mlflow.pytorch.log_model(small_cnn(10, 1, channels=[4]), name="m", serialization_format="pickle")
    finally:
        mlflow.set_tracking_uri(None)
    path = write(workdir, config({"uri": f"runs:/{run.info.run_id}/m"}))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:" in err and "stages[0].model: models.teacher outputs 10 classes but random_images has 4" in err

    import urllib.error

    import torch.hub

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(workdir / "empty"))
    path = write(workdir, config({"name": "torchvision", "params": {"arch": "resnet18"},
                                  "weights": "ResNet18_Weights.IMAGENET1K_V1"}))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "models.teacher.weights: cannot download" in err and str(workdir / "empty/hub/checkpoints") in err
    assert no_run_left_running(store(workdir))


def test_torchvision_weights_load_from_a_file_placed_in_torch_home(tmp_path, monkeypatch):
    import torchvision

    from mentor import untrained_layers
    from mentor_plugins.models.torchvision_models import torchvision_model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = torchvision.models.squeezenet1_1().state_dict()
    url = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.url
    (tmp_path / "hub/checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub/checkpoints" / url.rsplit("/", 1)[1])
    model = torchvision_model(4, 3, "squeezenet1_1", "DEFAULT")
    assert torch.equal(model.state_dict()["features.3.squeeze.weight"], state["features.3.squeeze.weight"])
    assert set(untrained_layers(model)) == {"classifier.1"}
    assert untrained_layers(torchvision_model(1000, 3, "squeezenet1_1", "IMAGENET1K_V1")) == {}
