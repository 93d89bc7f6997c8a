"""A third-party package with one component of every hook kind, installed with pip and run from the CLI.

tests/packages/mentor-example is the worked example of docs/plugins.md: a
model sized by its input, a logit loss, a feature loss, an .npz data source,
a glob unlabeled source, an entropy selection, a mixup stage kind and a CSV
callback, all written against `import mentor` only.
"""

import csv
import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import foreign_imports, mentor_with, pip_install, synthetic_images

PACKAGE = Path(__file__).parent / "packages" / "mentor-example"
THIRD_PARTY = {"torch", "numpy", "polars", "pydantic"}  # what the example may import besides mentor


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The package pip-installed (no deps) into a folder that goes on the path."""
    target = tmp_path_factory.mktemp("site")
    pip_install(PACKAGE, target)
    return target


@pytest.fixture
def example(site, monkeypatch):
    """Import the installed package's modules in this process (for the unit checks)."""
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield lambda name: importlib.import_module(f"mentor_example.{name}")
    for mod in [m for m in sys.modules if m.startswith("mentor_example")]:
        sys.modules.pop(mod)


mentor_cli = mentor_with


def test_the_example_imports_nothing_of_mentor_but_its_public_package():
    assert foreign_imports(PACKAGE / "mentor_example", THIRD_PARTY) == []


@pytest.mark.slow
def test_mentor_plugins_lists_every_kind_from_the_package_with_its_required_params(site, tmp_path):
    result = mentor_cli(site, "plugins", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(result.stdout) if r["package"] == "mentor-example"}
    assert set(rows) == {
        ("model", "example_mlp"), ("loss", "js_divergence"), ("loss", "similarity_preserving"),
        ("data_source", "npz"), ("unlabeled_source", "glob"), ("selection", "low_entropy"),
        ("method", "mixup"), ("callback", "csv_log"),
    }
    assert rows[("selection", "low_entropy")]["params"]["max_entropy"]["required"] is True
    assert rows[("model", "example_mlp")]["params"]["hidden"] == {
        "type": "integer", "default": 64, "required": False, "description": "width of the hidden layer"}
    assert rows[("callback", "csv_log")]["plugin"] == "mentor_example.callbacks"
    table = mentor_cli(site, "plugins", cwd=tmp_path).stdout
    assert "max_entropy (required)" in table


@pytest.mark.slow
def test_a_model_factory_that_asks_for_the_image_size_gets_it(site, tmp_path):
    result = mentor_cli(site, "layers", "example_mlp", "--input", "2x6x5", "--params", '{"hidden": 7}', "--json",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shapes = json.loads(result.stdout)
    assert shapes["flatten"] == [60] and shapes["act"] == [7]  # its first layer was sized 2*6*5 -> 7


def test_similarity_preserving_against_a_hand_computed_value(example):
    sp = example("losses").SimilarityPreserving("a", "b")
    fs = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # F F^T = [[1, 1], [1, 2]], rows L2-normalised
    ft = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # F F^T = I
    import mentor

    out = mentor.Outputs(student_logits=torch.zeros(2, 3), student_features={"a": fs}, teacher_features={"b": ft})
    r2, r5 = 1 / math.sqrt(2), 1 / math.sqrt(5)
    expected = ((r2 - 1) ** 2 + r2 ** 2 + r5 ** 2 + (2 * r5 - 1) ** 2) / 4
    assert sp(out).item() == pytest.approx(expected, rel=1e-6)


def test_jensen_shannon_is_zero_for_equal_logits_and_symmetric(example):
    import mentor

    js = example("losses").JensenShannon(temperature=2.0)
    a, b = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    assert js(mentor.Outputs(student_logits=a, teacher_logits=a)).item() == pytest.approx(0.0, abs=1e-7)
    forward = js(mentor.Outputs(student_logits=a, teacher_logits=b)).item()
    assert forward == pytest.approx(js(mentor.Outputs(student_logits=b, teacher_logits=a)).item())
    p, q = torch.softmax(a / 2, 1)[0], torch.softmax(b / 2, 1)[0]
    m = (p + q) / 2
    by_hand = 0.5 * float((p * (p / m).log()).sum() + (q * (q / m).log()).sum()) * 4
    assert forward == pytest.approx(by_hand, rel=1e-5)


def test_low_entropy_selects_from_a_hand_built_table(example):
    select = example("selection").low_entropy(max_entropy=0.5)
    scores = pl.DataFrame({  # image 7: sure (entropy 0.199); image 3: torn (0.693); image 5: one class (0)
        "index": [7, 7, 3, 3, 5], "rank": [0, 1, 1, 0, 0], "class": [2, 0, 1, 4, 9],
        "prob": [0.95, 0.05, 0.5, 0.5, 1.0],
    })
    selected = select(scores.lazy())
    assert selected.columns == ["index", "label", "prob", "rank"]
    assert selected.rows() == [(5, 9, 1.0, 0), (7, 2, pytest.approx(0.95), 0)]


def _write_npz(path: Path):
    train, test = synthetic_images(240, 0, size=8), synthetic_images(80, 1, size=8)
    np.savez(path, x_train=train.images[:, 0].numpy(), y_train=train.labels.numpy(),
             x_test=test.images[:, 0].numpy(), y_test=test.labels.numpy())


def _write_pool(folder: Path, n: int):
    folder.mkdir()
    for i, image in enumerate(synthetic_images(n, 2, size=8).images[:, 0]):
        Image.fromarray(image.numpy(), mode="L").save(folder / f"{i:03d}.png")


EXPERIMENT = {
    "name": "example-package",
    "seed": 0,
    "data": {"source": "npz", "params": {"path": "data.npz"}, "val_size": 40, "labeled_per_class": 20,
             "unlabeled": {"source": "glob", "params": {"root": "pool"}}},
    "models": {"teacher": {"name": "example_mlp", "params": {"hidden": 32}},
               "student": {"name": "example_mlp", "params": {"hidden": 8}}},
    "callbacks": [{"name": "csv_log", "params": {"path": "metrics.csv"}}],
    "stages": [
        {"name": "teacher", "kind": "mixup", "model": "teacher", "alpha": 0.4, "epochs": 3, "batch_size": 16,
         "optimizer": {"name": "sgd", "lr": 0.05}},
        {"name": "distill", "kind": "distill", "teacher": "teacher", "student": "student", "epochs": 2,
         "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.05},
         "losses": [{"name": "cross_entropy", "weight": 0.5},
                    {"name": "js_divergence", "weight": 0.5, "params": {"temperature": 2.0}},
                    {"name": "similarity_preserving", "weight": 1.0,
                     "params": {"student_node": "act", "teacher_node": "act"}}]},
        {"name": "pseudo", "kind": "pseudo_label", "teacher": "teacher", "student": "student", "top_p": 3,
         "selection": {"name": "low_entropy", "params": {"max_entropy": 1.0}}, "epochs": 1, "batch_size": 16,
         "optimizer": {"name": "sgd", "lr": 0.05}},
    ],
}


@pytest.mark.slow
def test_a_full_experiment_runs_on_the_package_alone(site, tmp_path):
    _write_npz(tmp_path / "data.npz")
    _write_pool(tmp_path / "pool", 60)
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(EXPERIMENT, sort_keys=False))
    result = mentor_cli(site, "run", "experiment.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("example-package")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    stages = {r.data.tags["mentor.stage"]: r for r in runs.values() if r.data.tags.get("mentor.kind") == "stage"}
    assert set(stages) == {"teacher", "distill", "pseudo"}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    teacher = stages["teacher"].data.metrics
    assert 0 <= teacher["train/lambda"] <= 1 and teacher["test/accuracy"] > 0.5  # mixup learned the quadrants
    distill = stages["distill"].data.metrics
    assert {"train/loss/js_divergence", "train/loss/similarity_preserving"} <= set(distill)
    scored = next(r for r in runs.values() if r.data.tags.get("mentor.kind") == "child"
                  and r.data.tags.get("mentor.stage") == "pseudo").data.metrics
    assert scored["pool/size"] == 60 and scored["pool/scored_images"] == 60  # the glob pool, every file
    assert 0 < scored["pseudo/selected_images"] < 60  # low_entropy kept some, not all
    parent = next(r for r in runs.values() if not r.data.tags.get("mentor.stage"))
    assert "csv_log" in json.dumps(parent.data.params)

    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    epochs = {(r["stage"], int(r["epoch"])) for r in rows}
    assert {("teacher", 1), ("teacher", 3), ("distill", 2), ("pseudo", 1)} <= epochs
    last = next(r for r in reversed(rows) if r["stage"] == "teacher" and r["metric"] == "val/accuracy")
    assert float(last["value"]) == pytest.approx(teacher["val/accuracy"], abs=1e-6)


@pytest.mark.slow
def test_a_missing_npz_is_a_located_error_with_exit_2(site, tmp_path):
    (tmp_path / "pool").mkdir()
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(EXPERIMENT, sort_keys=False))
    result = mentor_cli(site, "run", "experiment.yaml", cwd=tmp_path)
    assert result.returncode == 2
    # seen by validation, before any run exists: the file, line and field of the third-party source's path
    assert f"experiment.yaml:6:5: data.params.path: no such file or folder: {tmp_path / 'data.npz'}" in \
        result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "mlruns").exists()
