"""Shipping the student: ONNX export checked by ONNX Runtime, int8, the compression report, the registry,
and `mentor export` after the fact."""

import copy
import json

import mlflow
import numpy as np
import polars as pl
import pytest
import torch
from mlflow import MlflowClient

from mentor import hookimpl
from mentor.cli import main
from mentor.config import ConfigError, validate_document
from mentor.config.document import Document
from mentor.deploy.onnx_export import OnnxModel, check_onnx, export_onnx
from mentor.deploy.preprocess import Preprocess
from mentor.deploy.report import pareto_front, with_ratios
from mentor.pipeline import ExperimentRunner
from mentor.plugins import load_plugins
from mentor.tracking.store import tracking_uri
from mentor.tracking.tracker import fluent_tracking_uri

from .conftest import TINY, SyntheticData


def store() -> str:
    """The test's own store (an absolute URI: MLflow caches stores by URI)."""
    return tracking_uri()


def experiment(config, plugins):
    return validate_document(Document("test", config), plugins.registry)


def shipped(config, *, int8=True, register="tiny-student"):
    """The tiny teacher + distill experiment with the student exported, the report and the registry on."""
    config = copy.deepcopy(config)
    config["stages"][1]["export"] = {"int8": int8, "max_int8_drop": 1.0}
    config["report"] = {"repeats": 5, "warmup": 1, "throughput_batch": 8}
    if register:
        config["tracking"]["register"] = register
    return config


def run(config, plugins):
    runner = ExperimentRunner(experiment(config, plugins), plugins)
    results = runner.run()
    return runner, results


# -- ONNX matches PyTorch on every built-in architecture ------------------------------------------
BUILT_INS = load_plugins().registry


def _architectures():
    names = [c.name for c in BUILT_INS.all() if c.kind == "model" and c.name != "torchvision"]
    return [(name, {}) for name in names] + [("torchvision", {"arch": "resnet18"})]


@pytest.mark.parametrize(("name", "params"), _architectures(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.slow
def test_onnx_runtime_matches_pytorch_on_every_builtin_architecture(tmp_path, name, params):
    component = BUILT_INS.get("model", name)
    channels, size = (1, 28) if name in ("small_cnn", "cnn5") else (3, 32)
    model = component.factory(10, channels, **component.params.model_validate(params).model_dump()).eval()
    torch.manual_seed(0)
    x = torch.randn(6, channels, size, size)
    path = export_onnx(model, x[:2], tmp_path / f"{name}.onnx")
    check = check_onnx(OnnxModel(path), model, [(x, torch.zeros(6, dtype=torch.long))])
    scale = float(model(x).abs().max())
    assert check["max_abs_diff"] <= 1e-4 * max(1.0, scale), check
    assert check["top1_agreement"] == 1.0
    assert OnnxModel(path).logits(x[:5]).shape == (5, 10)  # any batch size, not the example's


def test_the_preprocessing_record_travels_inside_the_onnx_file(tmp_path):
    record = Preprocess(channels=1, height=8, width=8, mean=(0.3,), std=(0.2,), class_names=("a", "b"),
                        num_classes=2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)).eval()
    path = export_onnx(model, torch.randn(2, 1, 8, 8), tmp_path / "m.onnx", record)
    assert OnnxModel(path).preprocess == record


# -- a stage's export, the report and the registry, in one run --------------------------------------
@pytest.mark.slow
def test_export_report_and_registry_of_a_run(workdir, plugins, tiny_config):
    runner, results = run(shipped(tiny_config), plugins)
    client = MlflowClient(store())
    stage_run = next(r for r in client.search_runs([runner.tracker.experiment_id])
                     if r.data.tags.get("mentor.stage") == "student")
    m = stage_run.data.metrics
    assert m["export.onnx.max_abs_diff"] < 1e-4 and m["export.onnx.top1_agreement"] == 1.0
    assert 0 <= m["export.int8.test.accuracy"] <= 1
    assert m["export.int8.accuracy_drop"] == pytest.approx(m["export.onnx.test.accuracy"]
                                                           - m["export.int8.test.accuracy"])
    assert stage_run.data.tags["mentor.export.int8"] == "shipped"
    # the ONNX models are MLflow models of the stage's run, with the preprocessing record and a signature
    with fluent_tracking_uri(store()):
        onnx_model = mlflow.onnx.load_model(f"runs:/{stage_run.info.run_id}/student-student-onnx")
        info = mlflow.models.get_model_info(f"runs:/{stage_run.info.run_id}/student-student-int8")
    assert onnx_model.graph.input[0].name == "images"
    assert info.signature is not None and info.metadata["mentor.preprocess"]["channels"] == 1

    # the report: one row per model and format; the PyTorch accuracy is the kept weights' reported one
    report = runner.report
    assert set(zip(report["model"], report["format"], strict=True)) == {
        ("teacher", "pytorch fp32"), ("teacher", "onnx fp32"),
        ("student", "pytorch fp32"), ("student", "onnx fp32"), ("student", "onnx int8")}
    rows = {(r["model"], r["format"]): r for r in report.iter_rows(named=True)}
    student, teacher = rows[("student", "pytorch fp32")], rows[("teacher", "pytorch fp32")]
    assert student["test_accuracy"] == pytest.approx(results["student"].metrics["kept.test.accuracy"])
    assert teacher["test_accuracy"] == pytest.approx(results["teacher"].metrics["kept.test.accuracy"])
    assert rows[("student", "onnx fp32")]["test_accuracy"] == pytest.approx(m["export.onnx.test.accuracy"])
    params = {k: sum(p.numel() for p in runner.state().registry.get("model", "small_cnn").factory(
        4, 1, **experiment(tiny_config, plugins).models[k].params).parameters()) for k in ("teacher", "student")}
    assert student["parameters"] == params["student"]
    assert student["params_vs_teacher"] == pytest.approx(params["student"] / params["teacher"])
    assert teacher["params_vs_teacher"] == 1.0 and teacher["accuracy_vs_teacher"] == 0.0
    assert student["accuracy_vs_teacher"] == pytest.approx(student["test_accuracy"] - teacher["test_accuracy"])
    for row in rows.values():
        assert row["latency_p50_ms"] > 0 and row["latency_p95_ms"] >= row["latency_p50_ms"]
        assert row["throughput_ips"] > 0 and row["size_mb"] > 0 and row["mflops"] > 0
    assert rows[("student", "onnx int8")]["size_mb"] > 0
    parent = runner.parent
    artifacts = {a.path for a in client.list_artifacts(parent, "report")}
    assert artifacts == {"report/compression.md", "report/compression.csv", "report/pareto.png"}
    csv = pl.read_csv(client.download_artifacts(parent, "report/compression.csv", str(workdir)))
    assert csv.height == 5 and "speedup_vs_teacher" in csv.columns

    # the registry: a new version tagged with the run, loadable by both flavors, with the same outputs
    assert runner.registered == "models:/tiny-student/1"
    version = client.get_model_version("tiny-student", "1")
    assert version.tags["mentor.stage"] == "student" and version.tags["mentor.run_id"] == parent
    assert float(version.tags["mentor.kept.test.accuracy"]) == pytest.approx(student["test_accuracy"], abs=1e-5)
    import onnx

    onnx_file = workdir / "registered.onnx"
    with fluent_tracking_uri(store()):
        torch_model = mlflow.pytorch.load_model("models:/tiny-student/1", map_location="cpu")
        onnx.save_model(mlflow.onnx.load_model("models:/tiny-student/1"), str(onnx_file))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(OnnxModel(onnx_file).logits(x), torch_model(x).numpy(), atol=1e-4)
    assert client.get_run(parent).data.tags["mentor.registered"] == "models:/tiny-student/1"

    # and through predict, on image files, by its registry URI: the same classes as the model itself
    from PIL import Image

    from .conftest import synthetic_images

    images = synthetic_images(6, 1, size=8, channels=1)
    folder = workdir / "images"
    folder.mkdir()
    for i, image in enumerate(images.images):
        Image.fromarray(image[0].numpy()).save(folder / f"{i}.png")
    out = workdir / "predictions.parquet"
    assert main(["predict", "models:/tiny-student/1", str(folder), "--out", str(out), "--top-k", "2"]) == 0
    predicted = pl.read_parquet(out).sort("path")
    x = (images.images.float() / 255 - 0.3) / 0.3
    with torch.no_grad():
        expected = torch_model(x).argmax(1).tolist()
    assert predicted["index"].to_list() == expected
    assert predicted["class"].to_list() == [("a", "b", "c", "d")[i] for i in expected]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """One shipped run that registered 'tiny-student', shared by the tests that start from it: its folder
    (the store under mlruns/) and its results. Each test works in that folder (``in_registered``)."""
    folder = tmp_path_factory.mktemp("registered")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        _, results = run(shipped(copy.deepcopy(TINY), int8=False), load_plugins(extra=[SyntheticData()]))
    return folder, results


@pytest.fixture
def in_registered(registered, monkeypatch):
    monkeypatch.chdir(registered[0])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return registered[1]


@pytest.mark.slow
def test_a_registered_student_is_a_teacher_in_a_later_experiment(in_registered, plugins, tiny_config):
    results = in_registered
    later = copy.deepcopy(tiny_config)
    later["name"] = "tiny-later"
    later["models"]["registered"] = {"uri": "models:/tiny-student/1"}
    later["stages"] = [{"name": "measure", "kind": "evaluate", "model": "registered"},
                       dict(tiny_config["stages"][1], name="again", teacher="registered")]
    _, again = run(later, plugins)
    assert again["measure"].metrics["best.test.accuracy"] == pytest.approx(
        results["student"].metrics["kept.test.accuracy"])
    assert "kept.test.accuracy" in again["again"].metrics


@pytest.mark.slow
def test_a_registry_name_held_by_another_architecture_is_refused_before_training(in_registered, plugins,
                                                                                 tiny_config):
    other = shipped(tiny_config, int8=False)
    other["models"]["student"]["params"] = {"channels": [6]}
    with pytest.raises(ConfigError, match="tiny-student' holds small_cnn .*choose another name"):
        run(other, plugins)
    runs = MlflowClient(store()).search_runs(
        [MlflowClient(store()).get_experiment_by_name("tiny").experiment_id],
        filter_string="tags.`mentor.kind` = 'stage'")
    assert len(runs) == 2  # the first run's two stages; the refused run trained nothing


# -- bad input ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_an_int8_model_below_the_threshold_is_reported_not_shipped(workdir, plugins, tiny_config, monkeypatch):
    """The quantized model is swapped for an untrained one: its accuracy drops, and the stage says so."""
    from mentor import shipping

    def ruined(fp32_path, int8_path, calibration):
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
        torch.nn.init.zeros_(model[1].weight)
        torch.nn.init.constant_(model[1].bias, 0.0)
        model[1].bias.data[3] = 1.0  # always class 3
        return export_onnx(model, torch.randn(2, 1, 8, 8), int8_path)

    monkeypatch.setattr(shipping, "quantize_int8", ruined)
    config = shipped(tiny_config, register=None)
    config["stages"][1]["export"]["max_int8_drop"] = 0.05
    runner, _ = run(config, plugins)
    client = MlflowClient(store())
    stage_run = next(r for r in client.search_runs([runner.tracker.experiment_id])
                     if r.data.tags.get("mentor.stage") == "student")
    m = stage_run.data.metrics
    assert m["export.int8.accuracy_drop"] > 0.05
    assert stage_run.data.tags["mentor.export.int8"].startswith("rejected: test accuracy")
    with pytest.raises(mlflow.exceptions.MlflowException), fluent_tracking_uri(store()):
        mlflow.models.get_model_info(f"runs:/{stage_run.info.run_id}/student-student-int8")
    note = runner.report.filter(pl.col("format") == "onnx int8")["note"][0]
    assert note.startswith("rejected")


class Eigen(torch.nn.Module):
    """A model with an op the ONNX exporter cannot translate (a symmetric eigendecomposition)."""

    def __init__(self, num_classes):
        super().__init__()
        self.fc = torch.nn.Linear(64, num_classes)

    def forward(self, x):
        flat = x.flatten(1)
        gram = flat[:, :4, None] * flat[:, None, :4]
        return self.fc(flat) + torch.linalg.eigh(gram).eigenvalues.sum(1, keepdim=True)


class EigenPlugin:
    @hookimpl
    def register_models(self, register):
        register("eigen", lambda num_classes, in_channels: Eigen(num_classes), description="cannot export")


@pytest.mark.slow
def test_an_op_the_exporter_cannot_handle_is_named_with_the_stage(workdir, tiny_config, write_yaml, monkeypatch,
                                                                capsys):
    plugins = load_plugins(extra=[SyntheticData(), EigenPlugin()])
    monkeypatch.setattr("mentor.plugins.default_plugins", lambda: plugins)
    config = shipped(tiny_config, register=None)
    config["models"]["student"] = {"name": "eigen"}
    assert main(["run", str(write_yaml(config))]) == 2
    err = capsys.readouterr().err
    assert "stages[1].export" in err and "stage 'student'" in err and "aten._linalg_eigh" in err
    assert "Traceback" not in err
    client = MlflowClient(store())
    stage_run = next(r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
                     if r.data.tags.get("mentor.stage") == "student")
    assert stage_run.info.status == "FAILED"
    assert {a.path for a in client.list_artifacts(stage_run.info.run_id)} >= {"checkpoints", "plots"}


# -- after the fact ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_mentor_export_after_the_fact_and_compare_report(workdir, tiny_config, write_yaml, monkeypatch, capsys):
    plugins = load_plugins(extra=[SyntheticData()])
    monkeypatch.setattr("mentor.plugins.default_plugins", lambda: plugins)
    config = copy.deepcopy(tiny_config)
    config["report"] = {"repeats": 3, "warmup": 0, "throughput_batch": 4}
    assert main(["run", str(write_yaml(config))]) == 0
    out = capsys.readouterr().out
    assert "compression report, measured on" in out and "| student | onnx fp32 |" in out
    client = MlflowClient(store())
    parent = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                filter_string="tags.`mentor.kind` = 'experiment'")[0].info.run_id
    assert main(["export", parent, "--int8"]) == 0
    assert "student:" in capsys.readouterr().out
    stage_run = next(r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
                     if r.data.tags.get("mentor.stage") == "student")
    assert stage_run.info.status == "FINISHED"
    assert stage_run.data.metrics["export.onnx.top1_agreement"] == 1.0
    assert json.loads((workdir / "mlruns/checkpoints/tiny" / parent / "student/export/export.json").read_text())[
        "int8_status"] == "shipped"
    assert main(["export", "0" * 32]) == 2
    assert "no run 000" in capsys.readouterr().err
    assert main(["compare", "tiny", "--report", "compression"]) == 0
    shown = capsys.readouterr().out
    assert "tiny: run" in shown and "| teacher | pytorch fp32 |" in shown


# -- the report's arithmetic ------------------------------------------------------------------------------
def test_ratios_and_pareto_front_against_a_hand_built_table():
    rows = [
        {"model": "t", "role": "teacher", "format": "pytorch fp32", "parameters": 1000.0, "size_mb": 4.0,
         "mflops": 10.0, "latency_p50_ms": 8.0, "latency_p95_ms": 9.0, "throughput_ips": 100.0,
         "test_accuracy": 0.9},
        {"model": "s", "role": "student", "format": "pytorch fp32", "parameters": 100.0, "size_mb": 0.5,
         "mflops": 1.0, "latency_p50_ms": 2.0, "latency_p95_ms": 3.0, "throughput_ips": 400.0,
         "test_accuracy": 0.85},
        {"model": "s", "role": "student", "format": "onnx int8", "parameters": 100.0, "size_mb": 0.2,
         "mflops": 1.0, "latency_p50_ms": 1.0, "latency_p95_ms": 1.5, "throughput_ips": 900.0,
         "test_accuracy": 0.84},
        {"model": "slow", "role": "student", "format": "pytorch fp32", "parameters": 100.0, "size_mb": 0.5,
         "mflops": 1.0, "latency_p50_ms": 9.0, "latency_p95_ms": 9.5, "throughput_ips": 90.0,
         "test_accuracy": 0.8},
    ]
    table = with_ratios(rows, "t")
    s = table.row(1, named=True)
    assert s["params_vs_teacher"] == 0.1 and s["size_vs_teacher"] == 0.125 and s["flops_vs_teacher"] == 0.1
    assert s["speedup_vs_teacher"] == 4.0 and s["throughput_vs_teacher"] == 4.0
    assert s["accuracy_vs_teacher"] == pytest.approx(-0.05)
    int8 = table.row(2, named=True)  # no int8 teacher: against the teacher's PyTorch row
    assert int8["speedup_vs_teacher"] == 8.0 and int8["size_vs_teacher"] == 0.05
    assert pareto_front(table) == [2, 1, 0]  # the slow, less accurate student is beaten by all


@pytest.mark.slow
def test_a_stage_resumed_after_its_fit_logs_its_model_and_summary_once(workdir, plugins, tiny_config, monkeypatch):
    """Killed after the fit recorded everything but before the stage finished (here: in its export), the
    resumed stage does not log its model or its best and kept summaries a second time."""
    from mentor import shipping

    real = shipping.export_stage
    calls = []

    def killed_once(ctx, result):
        calls.append(ctx.stage.name)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(ctx, result)

    monkeypatch.setattr(shipping, "export_stage", killed_once)
    config = shipped(tiny_config, int8=False, register=None)
    config.pop("report")
    exp = experiment(config, plugins)
    with pytest.raises(KeyboardInterrupt):
        ExperimentRunner(exp, plugins).run()
    runner = ExperimentRunner(experiment(config, plugins), plugins)
    runner.run(resume=True)
    client = MlflowClient(store())
    runs = client.search_runs([runner.tracker.experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 3
    student = next(r for r in runs if r.data.tags.get("mentor.stage") == "student")
    models = client.search_logged_models([runner.tracker.experiment_id],
                                         filter_string=f"source_run_id = '{student.info.run_id}'")
    assert sorted(m.name for m in models) == ["student-student", "student-student-onnx"]
    for key in ("best.test.accuracy", "kept.test.accuracy", "best.epoch"):
        assert len(client.get_metric_history(student.info.run_id, key)) == 1, key


def test_a_session_that_only_checks_a_file_does_not_spin_its_threads(tmp_path):
    """The export's check sessions sleep between runs, so one still alive cannot take CPU from the report's
    PyTorch timing (issue 28: a distilled student's p95 jumped while its teacher's did not)."""
    from mentor.deploy.onnx_export import OnnxModel, export_onnx

    path = export_onnx(torch.nn.Linear(3, 2), torch.randn(2, 3), tmp_path / "m.onnx")
    key = "session.intra_op.allow_spinning"
    assert OnnxModel(path, spin=False).session.get_session_options().get_session_config_entry(key) == "0"
    default = OnnxModel(path).session.get_session_options()  # a timed session runs as shipped: ORT's default
    with pytest.raises(RuntimeError, match="does not have configuration"):
        default.get_session_config_entry(key)
