"""What a new user met in their first hour with their own data, each fixed at its root."""

from __future__ import annotations

import pytest
import yaml
from mlflow import MlflowClient

from mentor.cli import main
from mentor.config.schema import DataConfig
from mentor.data.splits import validation_rows

# --- a validation split that fits any data ---------------------------------------------------------


def test_val_size_is_rows_a_fraction_or_auto():
    assert validation_rows("auto", 60_000) == 5000  # Fashion-MNIST: as before
    assert validation_rows("auto", 3000) == 300  # a small folder: 10%
    assert validation_rows(0.2, 3000) == 600
    assert validation_rows(100, 3000) == 100
    assert DataConfig(source="x").val_size == "auto"
    assert DataConfig(source="x", val_size=0.25).val_size == 0.25
    assert DataConfig(source="x", val_size=5000.0).val_size == 5000


@pytest.mark.parametrize("value, words", [(1.5, "neither a number of rows"), (True, "true is not a size"),
                                          (-3, "must be >= 0"), ("most", "auto")])
def test_a_val_size_that_is_no_size_is_refused(value, words):
    with pytest.raises(ValueError, match=words):
        DataConfig(source="x", val_size=value)


@pytest.mark.slow
def test_a_small_folder_runs_with_the_default_and_the_run_says_how_it_was_split(workdir, capsys):
    """3,000 images: the old default of 5,000 validation rows failed after validate said the file was fine."""
    config = {"name": "small", "data": {"source": "random_images", "params": {
        "train_size": 300, "test_size": 40, "image_size": 8, "channels": 1, "num_classes": 3}},
        "models": {"s": {"name": "small_cnn", "params": {"channels": [4]}}},
        "stages": [{"name": "fit", "kind": "train", "model": "s", "epochs": 1, "batch_size": 64}],
        "engine": {"progress": "none"}, "tracking": {"log_model": False}}
    path = workdir / "small.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "  data:   random_images: 270 labeled training images, 30 validation (val_size auto), 40 test" in out
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    run = next(r for r in client.search_runs([client.get_experiment_by_name("small").experiment_id])
               if r.data.tags.get("mentor.kind") == "experiment")
    assert run.data.params["data.rows.val"] == "30" and run.data.params["data.rows.labeled"] == "270"
    assert run.data.params["data.val_size"] == "auto"


def test_validate_with_data_catches_sizes_and_classes_that_do_not_fit(tmp_path, capsys):
    config = {"name": "fit", "data": {"source": "random_images", "val_size": 500, "params": {
        "train_size": 300, "test_size": 40, "image_size": 8, "channels": 1, "num_classes": 3}},
        "models": {"s": {"name": "small_cnn", "params": {"channels": [4]}}},
        "stages": [{"name": "fit", "kind": "train", "model": "s", "epochs": 1}]}
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["validate", str(path)]) == 0  # the file alone is fine
    capsys.readouterr()
    assert main(["validate", str(path), "--data"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:" in err and "data.val_size: 500 leaves no training rows (the train set has 300)" in err
    assert main(["validate", str(path), "--data", "--set", "data.val_size=0.1"]) == 0
    assert "data: random_images: 270 labeled training images, 30 validation (val_size 0.1), 40 test" in \
        capsys.readouterr().out
    config["data"]["val_size"] = 0.1
    config["models"]["s"]["preprocess"] = {"classes": ["cat", "dog", "fox"]}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["validate", str(path), "--data"]) == 2
    err = capsys.readouterr().err
    assert "fit.yaml:17:5: models.s.preprocess: the data's classes '0', '1', '2' are not among the model's 3 classes " \
           "('cat', 'dog', 'fox')" in err


# --- a teacher used as it is ships like a trained model ----------------------------------------------

@pytest.mark.slow
def test_an_evaluate_stages_model_is_exported_and_predicted_like_a_trained_one(workdir, capsys):
    import numpy as np
    import polars as pl
    import torch
    from PIL import Image

    from .test_teachers import TEACHER, config, stage_runs, store, teacher_weights, write

    torch.save(teacher_weights(), workdir / "teacher.pt")
    experiment = config({**TEACHER, "checkpoint": str(workdir / "teacher.pt")},
                        [{"name": "teacher_eval", "kind": "evaluate", "model": "teacher"}])
    experiment["tracking"] = {"log_model": True}
    assert main(["run", str(write(workdir, experiment))]) == 0, capsys.readouterr().err
    runs = stage_runs(store(workdir))
    run = runs["teacher_eval"]
    out = capsys.readouterr().out  # it trained nothing, and says so
    accuracy = run.data.metrics["test/accuracy"]
    assert f"        teacher_eval: test accuracy {accuracy:.4f} (evaluated as it is, nothing trained)" in out

    assert main(["export", run.info.run_id]) == 0, capsys.readouterr().err  # the stage of the run id given
    out, err = capsys.readouterr()
    assert "Downloading artifacts" not in err  # MLflow's bar for the run's config.yaml: nothing to watch
    assert out.startswith("teacher_eval: ") and "model.onnx" in out
    onnx_file = next(workdir.rglob("teacher_eval/export/model.onnx"))
    assert onnx_file.is_file()

    photos = workdir / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(photos / f"{i}.png")
    predictions = workdir / "p.parquet"
    assert main(["predict", run.info.run_id, str(photos), "--out", str(predictions)]) == 0
    assert "Downloading artifacts" not in capsys.readouterr().err
    assert pl.read_parquet(predictions).height == 3


# --- messages that read like internals -------------------------------------------------------------

def _distill_with(weight) -> dict:
    return {"name": "w", "data": {"source": "random_images", "params": {"train_size": 64, "test_size": 16}},
            "models": {"t": {"name": "small_cnn"}, "s": {"name": "small_cnn"}},
            "stages": [{"name": "t", "kind": "train", "model": "t"},
                       {"name": "d", "kind": "distill", "teacher": "t", "student": "s",
                        "losses": [{"name": "kd", "weight": weight}]}]}


@pytest.mark.parametrize("weight, shown", [(float("inf"), "inf"), ([1, 2], "[1, 2]"), ("high", "'high'")])
def test_a_value_that_fits_no_form_of_a_field_is_said_once_with_what_it_accepts(tmp_path, capsys, weight, shown):
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(_distill_with(weight), sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].endswith(f"stages[1].losses[0].weight: {shown} is none of what it accepts: a finite number, or a "
                           "mapping {start, end, epochs, shape} (WeightSchedule)")


def test_a_mapping_is_held_to_the_schedule_it_looks_like(tmp_path, capsys):
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(_distill_with({"start": 0}), sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": ", 1)[1] for line in err] == ["stages[1].losses[0].weight.end: Field required",
                                                         "stages[1].losses[0].weight.epochs: Field required"]


def test_a_full_disk_under_the_store_names_the_store_and_the_space_left(workdir, capsys, monkeypatch):
    import sqlite3

    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    from mentor.tracking.tracker import Tracker

    def full(*args, **kwargs):  # what MLflow raises when SQLite cannot grow its file
        try:
            raise sqlalchemy.exc.OperationalError("CREATE INDEX index_metrics ON metrics (run_uuid)", {},
                                                  sqlite3.OperationalError("database or disk is full"))
        except sqlalchemy.exc.OperationalError as exc:
            raise MlflowException(f"(sqlite3.OperationalError) database or disk is full\n[SQL: {exc.statement}]") \
                from exc

    monkeypatch.setattr(Tracker, "start_run", full)
    config = {"name": "full", "data": {"source": "random_images", "params": {"train_size": 64, "test_size": 16}},
              "models": {"s": {"name": "small_cnn"}}, "stages": [{"name": "s", "kind": "train", "model": "s"}],
              "engine": {"progress": "none"}}
    path = workdir / "full.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    store = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    assert err.startswith(f"error: the disk under the tracking store {store} is full; ") and " MB free at " in err
    assert "SQL" not in err and "OperationalError" not in err and len(err.splitlines()) == 1
