"""mentor predict as a user meets it: a model file or an MLflow model, a folder of images, a parquet out."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from torch import nn

from mentor.cli import main
from mentor.data.pool import convert, read_image
from mentor.deploy.onnx_export import export_onnx
from mentor.deploy.preprocess import Preprocess

RECORD = Preprocess(channels=1, height=28, width=28, mean=(0.4,), std=(0.3,), class_names=("ant", "bee", "cow"),
                    num_classes=3)


@pytest.fixture(scope="module")
def model():
    """A small conv net whose top class varies from image to image (a fresh small_cnn's barely does)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 5, stride=3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    return export_onnx(model, torch.zeros(2, 1, 28, 28), tmp_path_factory.mktemp("model") / "model.onnx", RECORD)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Nested grayscale 28x28 PNGs of noise, one RGB 40x30 (width x height), one corrupt file, one text file."""
    root = tmp_path_factory.mktemp("images")
    (root / "a" / "b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L").save(root / "a" / f"g{i}.png")
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), "RGB").save(root / "a" / "b" / "rgb.png")
    (root / "broken.png").write_bytes(b"not a png")
    (root / "notes.txt").write_text("not an image")
    return root


def expected(model, path) -> torch.Tensor:
    """Softmax of the model on the image decoded, converted and normalised by hand as at training."""
    image = convert(read_image(str(path)), RECORD.channels, RECORD.size)
    x = (image[None].float() / 255 - RECORD.mean[0]) / RECORD.std[0]
    with torch.no_grad():
        return model(x).softmax(1)[0]


@pytest.mark.slow
def test_onnx_model_on_a_folder(model, onnx_file, folder, tmp_path, capsys):
    out = tmp_path / "predictions.parquet"
    assert main(["predict", str(onnx_file), str(folder), "--out", str(out), "--top-k", "2"]) == 0
    table = pl.read_parquet(out)
    files = sorted(str(p) for p in folder.rglob("*.png") if p.name != "broken.png")
    assert table["path"].to_list() == files
    assert table.columns == ["path", "class", "index", "probability", "top_classes", "top_probabilities"]
    for row in table.iter_rows(named=True):
        probabilities = expected(model, row["path"])
        top = int(probabilities.argmax())
        assert row["index"] == top and row["class"] == RECORD.class_names[top]
        assert row["top_classes"][0] == row["class"] and len(row["top_classes"]) == 2
        assert row["top_probabilities"] == sorted(row["top_probabilities"], reverse=True)
        assert sum(row["top_probabilities"]) <= 1 + 1e-6
        assert row["probability"] == pytest.approx(float(probabilities[top]), abs=1e-5)
        assert row["top_probabilities"][1] == pytest.approx(float(probabilities.sort(descending=True)[0][1]),
                                                            abs=1e-5)
    assert len(set(table["class"])) > 1  # the images are told apart
    skipped = pl.read_csv(tmp_path / "predictions.skipped.csv")
    assert skipped["path"].to_list() == [str(folder / "broken.png")] and skipped["error"][0]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == f"7 images -> {out} (1 skipped, listed in {tmp_path / 'predictions.skipped.csv'})"


def test_rgb_image_converted_as_in_training(model, onnx_file, folder, tmp_path):
    out = tmp_path / "p.parquet"
    listing = tmp_path / "list.csv"
    pl.DataFrame({"path": [str(folder / "a" / "b" / "rgb.png")]}).write_csv(listing)
    assert main(["predict", str(onnx_file), str(listing), "--out", str(out), "--workers", "0"]) == 0
    row = pl.read_parquet(out).row(0, named=True)
    rgb = read_image(str(folder / "a" / "b" / "rgb.png"))
    assert rgb.shape == (3, 30, 40)
    gray = convert(rgb, 1, (28, 28))  # luma, shorter side to 28, centre crop
    x = (gray[None].float() / 255 - 0.4) / 0.3
    with torch.no_grad():
        probabilities = model(x).softmax(1)[0]
    assert row["index"] == int(probabilities.argmax())
    assert row["top_probabilities"] == pytest.approx(probabilities.sort(descending=True)[0].tolist(), abs=1e-5)
    assert len(row["top_classes"]) == 3  # --top-k 5 of 3 classes


def test_no_resize_refuses_a_differing_image(onnx_file, folder, tmp_path, capsys):
    out = tmp_path / "p.parquet"
    assert main(["predict", str(onnx_file), str(folder), "--out", str(out), "--no-resize", "--workers", "0"]) == 2
    message = capsys.readouterr().err.strip()
    assert message == (f"error: {folder / 'a' / 'b' / 'rgb.png'}: 30x40 with 3 channels; the model expects 28x28 "
                       "with 1 channel (drop --no-resize to convert it as in training)")
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
    exact = tmp_path / "exact.parquet"  # 28x28 grayscale images alone pass as they are
    gray = tmp_path / "gray"
    gray.mkdir()
    for i in range(2):
        (gray / f"g{i}.png").write_bytes((folder / "a" / f"g{i}.png").read_bytes())
    assert main(["predict", str(onnx_file), str(gray), "--out", str(exact), "--no-resize", "--workers", "0"]) == 0
    assert pl.read_parquet(exact).height == 2


def test_relative_paths_of_a_list_are_read_from_its_folder(onnx_file, folder, tmp_path):
    listing = folder / "a" / "list.parquet"
    pl.DataFrame({"path": ["g1.png", "b/rgb.png", str(folder / "a" / "g2.png")]}).write_parquet(listing)
    out = tmp_path / "p.parquet"
    assert main(["predict", str(onnx_file), str(listing), "--out", str(out), "--workers", "0"]) == 0
    assert pl.read_parquet(out)["path"].to_list() == ["g1.png", "b/rgb.png", str(folder / "a" / "g2.png")]
    listing.unlink()


def test_a_single_image_several_files_globs_folders_and_lists_all_work(onnx_file, folder, tmp_path, capsys):
    g0, g1, rgb = folder / "a" / "g0.png", folder / "a" / "g1.png", folder / "a" / "b" / "rgb.png"
    out = tmp_path / "p.parquet"

    def predicted(*sources: str) -> list[str]:
        assert main(["predict", str(onnx_file), *sources, "--out", str(out), "--workers", "0"]) == 0, \
            capsys.readouterr().err
        return pl.read_parquet(out)["path"].to_list()

    assert predicted(str(g0)) == [str(g0)]  # one photo, the first thing a user tries
    assert predicted(str(rgb), str(g0)) == [str(rgb), str(g0)]  # in the order given
    assert predicted(str(folder / "a" / "g[0-2].png")) == [str(folder / "a" / f"g{i}.png") for i in range(3)]
    assert predicted(str(folder / "**" / "rgb.png")) == [str(rgb)]  # ** at any depth
    listing = tmp_path / "list.csv"
    pl.DataFrame({"path": [str(g1)]}).write_csv(listing)
    every = predicted(str(g0), str(folder / "a"), str(listing))  # each file once, first place kept
    assert every[0] == str(g0) and every.count(str(g1)) == 1 and len(every) == 7
    for argv, words in (([str(folder / "a" / "*.jpg")], "no image matches this pattern"),
                        ([str(folder / "notes.txt")], "not an image (.jpg, .jpeg, .png"),
                        ([str(g0), str(tmp_path / "gone.png")], "gone.png does not exist")):
        assert main(["predict", str(onnx_file), *argv, "--out", str(tmp_path / "x.parquet")]) == 2, words
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1


def test_bad_input_is_one_line_and_exit_2(onnx_file, folder, tmp_path, capsys):
    import onnx

    empty = tmp_path / "empty"
    empty.mkdir()
    no_path = tmp_path / "files.csv"
    pl.DataFrame({"file": ["x.png"]}).write_csv(no_path)
    bare = onnx.load(str(onnx_file))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    cases = [
        ([str(tmp_path / "missing.onnx"), str(folder)], "does not exist"),
        ([str(onnx_file), str(empty)], "no images found"),
        ([str(onnx_file), str(no_path)], "has no 'path' column (columns: file)"),
        ([str(tmp_path / "bare.onnx"), str(folder)], "carries no preprocessing record"),
        ([str(tmp_path), str(folder)], "without an MLmodel file"),
    ]
    for argv, words in cases:
        assert main(["predict", *argv, "--out", str(tmp_path / "p.parquet")]) == 2, words
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def store(model, onnx_file, tmp_path_factory):
    """A sqlite store with an experiment run whose two stage runs logged models as mentor does: ``teacher`` a
    pytorch one without a record (logged before records), ``student`` a pytorch one and an onnx one with it."""
    import mlflow
    import mlflow.onnx
    import mlflow.pytorch
    import onnx
    from mlflow import MlflowClient

    from mentor.tracking.store import get_or_create_experiment
    from mentor.tracking.tracker import fluent_tracking_uri

    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("predict", artifact_location=(root / "artifacts").as_uri())
    assert get_or_create_experiment(client, "predict", uri) == experiment
    ids = {}
    metadata = {"mentor.preprocess": RECORD.to_dict()}

    def stage_run(name):
        return {"experiment_id": experiment, "nested": True, "tags": {"mentor.kind": "stage", "mentor.stage": name}}

    with fluent_tracking_uri(uri), mlflow.start_run(experiment_id=experiment, tags={"mentor.kind": "experiment"}) \
            as parent:
        ids["experiment"] = parent.info.run_id
        with mlflow.start_run(**stage_run("teacher")) as run:
            mlflow.pytorch.log_model(model, name="teacher-teacher", serialization_format="pickle",
                                     pip_requirements=["torch"])
            ids["teacher"] = run.info.run_id
        with mlflow.start_run(**stage_run("student")) as run:
            ids["student"] = run.info.run_id
            mlflow.pytorch.log_model(model, name="student-student", serialization_format="pickle",
                                     pip_requirements=["torch"], metadata=metadata)
            mlflow.onnx.log_model(onnx.load(str(onnx_file)), name="student-student-onnx", metadata=metadata,
                                  pip_requirements=["onnxruntime"])
    return uri, ids


def test_mlflow_models_by_uri_and_run_id(store, folder, tmp_path, capsys):
    uri, ids = store
    tables = {}
    for name, spec in [("uri", f"runs:/{ids['student']}/student-student"), ("stage", ids["student"]),
                       ("experiment", ids["experiment"])]:
        out = tmp_path / f"{name}.parquet"
        assert main(["predict", spec, str(folder), "--out", str(out), "--tracking-uri", uri, "--workers", "0"]) == 0
        tables[name] = pl.read_parquet(out)
        shown = capsys.readouterr().out.splitlines()[0]
        assert shown.endswith("(pytorch)" if name == "uri" else "(onnx)"), shown  # a run's onnx model first
    onnx_only = tmp_path / "onnx.parquet"
    assert main(["predict", f"runs:/{ids['student']}/student-student-onnx", str(folder), "--out", str(onnx_only),
                 "--tracking-uri", uri, "--workers", "0"]) == 0
    torch_rows, onnx_rows = tables["uri"], pl.read_parquet(onnx_only)
    assert torch_rows["path"].to_list() == onnx_rows["path"].to_list()
    assert torch_rows["index"].to_list() == onnx_rows["index"].to_list()  # the same top-1 from both flavors
    assert np.allclose(torch_rows["probability"].to_numpy(), onnx_rows["probability"].to_numpy(), atol=1e-5)
    assert tables["stage"].equals(tables["experiment"])  # the experiment's last stage with a model: student
    import mlflow.artifacts

    from mentor.tracking.tracker import fluent_tracking_uri

    with fluent_tracking_uri(uri):  # runs:/ of a logged model resolves it in the fluent store, whatever tracking_uri
        folder_model = mlflow.artifacts.download_artifacts(f"runs:/{ids['student']}/student-student",
                                                           dst_path=str(tmp_path / "local"), tracking_uri=uri)
    local = tmp_path / "local.parquet"
    assert main(["predict", folder_model, str(folder), "--out", str(local), "--workers", "0"]) == 0
    assert pl.read_parquet(local).equals(torch_rows)


def test_pytorch_model_without_record_is_refused(store, folder, tmp_path, capsys, monkeypatch):
    uri, ids = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the default store, as for mentor run
    assert main(["predict", ids["teacher"], str(folder), "--out", str(tmp_path / "p.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert "carries no preprocessing record" in err and "mentor export" in err and len(err.splitlines()) == 1
    assert main(["predict", "0" * 32, str(folder)]) == 2
    assert f"{'0' * 32}: " in capsys.readouterr().err


def test_output_is_written_in_row_groups(onnx_file, folder, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from mentor.deploy import predict

    monkeypatch.setattr(predict, "CHUNK_ROWS", 3)
    out = tmp_path / "p.parquet"
    assert main(["predict", str(onnx_file), str(folder), "--out", str(out), "--batch-size", "2",
                 "--workers", "0"]) == 0
    meta = pq.ParquetFile(out).metadata  # batches of 2 (the last one holds broken.png): flushed at 4, then 3
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [4, 3]
