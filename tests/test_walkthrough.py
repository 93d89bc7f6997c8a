"""docs/own_data.md, command by command, on a few dozen tiny images: the shipped experiment file as it is,
made small with --set only."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from mentor.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--set", "data.params.image_size=16", "--set", "models.student.preprocess.image_size=8",
         "--set", "stages[1].epochs=1", "--set", "stages[1].batch_size=16",
         "--set", "stages[2].epochs=1", "--set", "stages[2].batch_size=16",
         "--set", "stages[2].finetune.epochs=1", "--set", "stages[2].finetune.batch_size=16",
         "--set", "stages[2].selection.params.tau=0.0",  # an untrained teacher is sure of nothing
         "--set", "report.repeats=3", "--set", "report.warmup=1", "--set", "engine.progress=none"]


def _project(folder: Path) -> Path:
    """The layout of the page's step 1: photos/, unlabeled/ (with a text file and a truncated image), teacher.pt."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):
        for name in ("cat", "dog", "fox"):
            (folder / "photos" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                    folder / "photos" / split / name / f"{i}.png")
    (folder / "unlabeled" / "day1").mkdir(parents=True)
    for i in range(10):
        image = Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8))
        image.save(folder / "unlabeled" / "day1" / f"{i}.jpg")
    (folder / "unlabeled" / "notes.png").write_text("not an image")
    import torchvision

    torch.manual_seed(0)
    teacher = torchvision.models.resnet18(num_classes=3)
    torch.save({"epoch": 1, "model_state_dict": teacher.state_dict()}, folder / "teacher.pt")
    shutil.copy(ROOT / "experiments" / "own_data" / "own_data.yaml", folder / "own_data.yaml")
    return folder / "own_data.yaml"


@pytest.mark.slow
def test_the_own_data_walkthrough_runs_as_written(workdir, capsys):
    page = (ROOT / "docs" / "own_data.md").read_text()
    path = _project(workdir / "my-project")

    # 3. Check it
    assert main(["validate", str(path), "--data", *SMALL]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "data: image_folder: 32 labeled training images, 4 validation (val_size auto), 18 test" in out
    assert main(["validate", str(path), "--data", *SMALL, "--set", "data.val_size=100"]) == 2
    assert "data.val_size: 100 leaves no training rows (the train set has 36)" in capsys.readouterr().err

    # 4. Run it
    assert main(["run", str(path), *SMALL]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    run_id = re.search(r"run ([0-9a-f]{32}) finished", out).group(1)
    assert "[pseudo] scores_round1: scored 11 files of the pool; 1 could not be read" in out
    assert "[pseudo] round 1: selected 10 rows of 11 files" in out
    assert "[pseudo] exported: " in out and "registered: models:/own-data-student/1" in out

    # 5. Where everything lands (each row of the page's table)
    runs = workdir / "mlruns"
    stage_dir = runs / "checkpoints" / "own-data" / run_id
    assert "`mlruns/mlflow.db`" in page and (runs / "mlflow.db").is_file()
    assert (runs / "artifacts" / "own-data" / run_id / "artifacts" / "report" / "compression.csv").is_file()
    assert {"checkpoint.pt", "final.pt", "result.json"} <= {p.name for p in (stage_dir / "distill").iterdir()}
    exported = {p.name for p in (stage_dir / "pseudo" / "export").iterdir()}
    assert {"model.onnx", "model.int8.onnx", "export.json"} <= exported
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    pseudo = next(r for r in client.search_runs([client.get_experiment_by_name("own-data").experiment_id])
                  if r.data.tags.get("mentor.stage") == "pseudo")
    selected = pl.read_parquet(client.download_artifacts(pseudo.info.run_id, "pseudo_labels/selected.parquet",
                                                         str(workdir)))
    assert {"path", "label", "class_name", "prob"} <= set(selected.columns)
    assert set(selected["class_name"]) <= {"cat", "dog", "fox"} and all(p.endswith(".jpg") for p in selected["path"])
    skipped = pl.read_csv(client.download_artifacts(pseudo.info.run_id, "scores_round1/skipped.csv", str(workdir)))
    assert skipped["path"].to_list() == [str(workdir / "my-project" / "unlabeled" / "notes.png")]
    assert any((runs / "cache").iterdir())
    assert main(["cache", "--dir", str(runs / "cache")]) == 0

    # 6. Compare, export again, predict
    capsys.readouterr()
    assert main(["compare", "own-data"]) == 0
    assert "distill" in capsys.readouterr().out
    assert main(["export", run_id, "--stage", "distill"]) == 0, capsys.readouterr().err
    assert (stage_dir / "distill" / "export" / "model.onnx").is_file()
    photos = workdir / "my-project" / "photos" / "test"
    out_file = workdir / "predictions.parquet"
    assert main(["predict", run_id, str(photos / "cat"), str(photos / "dog" / "0.png"), str(photos / "fox" / "*.png"),
                 "--out", str(out_file)]) == 0, capsys.readouterr().err
    table = pl.read_parquet(out_file)
    assert len(table) == 6 + 1 + 6 and set(table["class"]) <= {"cat", "dog", "fox"}


def test_the_readme_shows_the_shipped_own_data_file_as_it_is():
    readme = (ROOT / "README.md").read_text()
    shipped = (ROOT / "experiments" / "own_data" / "own_data.yaml").read_text()
    body = shipped[shipped.index("name: own-data"):]
    assert f"```yaml\n{body}```" in readme
