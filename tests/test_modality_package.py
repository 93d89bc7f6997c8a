"""A second modality as a third-party package: tests/packages/mentor-tabular, pip-installed, run from the CLI.

Train, distill (from the teacher cache's recorded noise views), pseudo_label,
FixMatch, Mean Teacher and MPL (their strong view is the modality's),
export, the compression report and predict, on feature vectors from CSV.

The package registers a `tabular` modality (float feature vectors, noise
augmentation as draw + apply, CSV/parquet rows for predict), a table data
source and an MLP, written against `import mentor` only (docs/plugins.md,
"A modality"). Nothing in mentor's core names it.
"""

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from tests.conftest import foreign_imports, mentor_with, pip_install

PACKAGE = Path(__file__).parent / "packages" / "mentor-tabular"
THIRD_PARTY = {"torch", "numpy", "polars", "pydantic"}
CLASSES = ["setosa", "versicolor", "virginica"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    pip_install(PACKAGE, target)
    return target


@pytest.fixture
def tabular(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield lambda name: importlib.import_module(f"mentor_tabular.{name}")
    for mod in [m for m in sys.modules if m.startswith("mentor_tabular")]:
        sys.modules.pop(mod)


mentor_cli = mentor_with


def test_the_package_imports_nothing_of_mentor_but_its_public_package():
    assert foreign_imports(PACKAGE / "mentor_tabular", THIRD_PARTY) == []


def test_noise_augmentation_applies_its_draw_by_hand_and_rebuilds_the_same_view(tabular):
    noise = tabular("modality").FeatureNoise(sigma=0.5, drop=0.5, mean=[0.0, 10.0], std=[1.0, 2.0])
    x = torch.tensor([[1.0, 2.0]])
    draw = tabular("modality").NoiseDraw(noise=torch.tensor([[0.5, 0.5]]), keep=torch.tensor([[True, False]]))
    # kept feature: 1 + 0.5 * std 1; dropped feature: its mean 10 + 0.5 * std 2
    assert noise.apply(x, draw).tolist() == [[1.5, 11.0]]
    a = noise.draw(4, torch.Generator().manual_seed(3))
    b = noise.draw(4, torch.Generator().manual_seed(3))
    x = torch.randn(4, 2)
    assert torch.equal(noise.apply(x, a), noise.apply(x, b))  # a recorded draw rebuilds the very view
    stacked = a.map(lambda t: t[:2])  # recorded views index draws like the image modality's
    assert type(stacked).__name__ == "NoiseDraw" and stacked.noise.shape == (2, 2)


def test_recorded_noise_views_rebuild_each_draw_exactly(tabular):
    import mentor

    noise = tabular("modality").FeatureNoise(sigma=0.3, drop=0.2, mean=[0.0, 1.0, 2.0], std=[1.0, 1.0, 1.0])
    x = torch.randn(5, 3)
    views = mentor.RecordedViews.for_stage(noise, _draw_views(noise, 5, 3), 3, 5, seed=1)
    assert type(views.draws).__name__ == "NoiseDraw" and views.draws.noise.shape == (3, 5, 3)
    rows = torch.arange(5)
    for epoch in range(3):  # the view a row shows in an epoch is its recorded draw, applied to it
        shown = views.apply(x, rows, epoch)
        v = views.view_of(rows, epoch)
        for i in range(5):
            one = tabular("modality").NoiseDraw(noise=views.draws.noise[v[i], i][None],
                                                keep=views.draws.keep[v[i], i][None])
            assert torch.equal(shown[i:i + 1], noise.apply(x[i:i + 1], one))


def _draw_views(augment, n, count):
    """Draws as the teacher cache records them: ``count`` views per row, stacked ``[V, N, ...]``."""
    draws = [augment.draw(n, torch.Generator().manual_seed(v)) for v in range(count)]
    return type(draws[0])(**{k: torch.stack([d.tensors()[k] for d in draws]) for k in draws[0].tensors()})


def _tables(folder: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 6))
    for n, name in ((900, "table.csv"), (60, "new.csv")):
        y = rng.integers(0, 3, n)
        x = centres[y] + rng.normal(0, 1.0, (n, 6))
        x[:, 2] = x[:, 2] * 100 + 500  # a feature on another scale: the data's statistics normalise it
        frame = pl.DataFrame({f"f{i}": x[:, i] for i in range(6)}).with_columns(
            pl.Series("label", [CLASSES[i] for i in y]))
        frame.write_csv(folder / name)
    (folder / "bad.csv").write_text("f0,f1,f2,f3,f4,f5\n1,2,3,4,5,6\n1,,3,4,5,6\n")


EXPERIMENT = {
    "name": "tabular",
    "seed": 0,
    "data": {"source": "table", "params": {"path": "table.csv"}, "labeled_per_class": 40},
    "models": {"teacher": {"name": "tabular_mlp", "params": {"hidden": 64}},
               "student": {"name": "tabular_mlp", "params": {"hidden": 8, "depth": 1}}},
    "stages": [
        {"name": "teacher", "kind": "train", "model": "teacher", "epochs": 10, "batch_size": 32,
         "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        {"name": "distill", "kind": "distill", "teacher": "teacher", "student": "student", "epochs": 10,
         "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
         "augment": {"randaugment": {"num_ops": 2, "magnitude": 3}}, "teacher_cache": {"views": 4},
         "losses": [{"name": "cross_entropy", "weight": 0.5}, {"name": "kd", "weight": 0.5}], "export": {}},
        {"name": "pseudo", "kind": "pseudo_label", "teacher": "teacher", "student": "student", "epochs": 3,
         "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05},
         "selection": {"name": "threshold", "params": {"tau": 0.5}}},
        {"name": "fixmatch", "kind": "fixmatch", "model": "student", "init": "distill", "epochs": 2,
         "steps_per_epoch": 10, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.03, "momentum": 0.9}},
        {"name": "mean_teacher", "kind": "mean_teacher", "model": "student", "epochs": 1, "steps_per_epoch": 10,
         "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.03}},
        {"name": "mpl", "kind": "mpl", "teacher": "teacher", "student": "student", "epochs": 1, "batch_size": 16,
         "optimizer": {"name": "sgd", "lr": 0.03}, "teacher_optimizer": {"name": "sgd", "lr": 0.01}},
    ],
    "report": {},
}


@pytest.mark.slow
def test_train_distill_pseudo_label_export_and_predict_feature_vectors_from_the_cli(site, tmp_path):
    _tables(tmp_path)
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(EXPERIMENT, sort_keys=False))
    listed = json.loads(mentor_cli(site, "plugins", "--json", cwd=tmp_path).stdout)
    assert {(r["kind"], r["name"]) for r in listed if r["kind"] == "modality"} == {("modality", "image"),
                                                                                   ("modality", "tabular")}
    result = mentor_cli(site, "run", "experiment.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "120 labeled training examples" in result.stdout + result.stderr

    import mlflow
    import onnx

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tabular")
    runs = client.search_runs([experiment.experiment_id])
    stages = {r.data.tags["mentor.stage"]: r for r in runs if r.data.tags.get("mentor.kind") == "stage"}
    assert set(stages) == {"teacher", "distill", "pseudo", "fixmatch", "mean_teacher", "mpl"}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert stages["teacher"].data.metrics["test/accuracy"] > 0.9
    assert stages["distill"].data.metrics["test/accuracy"] > 0.9
    assert stages["distill"].data.tags["mentor.teacher_cache"].startswith("on")  # recorded noise views
    round1 = next(r for r in runs if r.data.tags.get("mentor.kind") == "child"
                  and r.data.tags.get("mentor.stage") == "pseudo")
    assert round1.data.metrics["pseudo/selected_rows"] > 0 and round1.data.metrics["pseudo/precision"] > 0.9
    fixmatch = stages["fixmatch"].data.metrics  # weak view as is, strong view: the modality's noise
    assert 0 < fixmatch["fixmatch/mask_rate"] <= 1 and fixmatch["test/accuracy"] > 0.9

    onnx_file = next((tmp_path / "mlruns").rglob("distill/export/model.onnx"))
    model = onnx.load(str(onnx_file))
    assert [i.name for i in model.graph.input] == ["features"]  # the modality's input name
    record = json.loads(next(p.value for p in model.metadata_props if p.key == "mentor.preprocess"))
    assert record["modality"] == "tabular" and record["channels"] == 6
    assert record["details"] == {"features": [f"f{i}" for i in range(6)]}
    assert record["class_names"] == CLASSES

    out = tmp_path / "predictions.parquet"
    result = mentor_cli(site, "predict", str(onnx_file), "new.csv", "bad.csv", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    predicted = pl.read_parquet(out)
    truth = pl.read_csv(tmp_path / "new.csv")["label"]
    assert predicted["path"].to_list()[:2] == ["new.csv:1", "new.csv:2"]
    new = predicted.filter(pl.col("path").str.starts_with("new.csv"))
    assert (new["class"] == truth).mean() > 0.9  # the student's own class names, its own normalisation
    assert predicted.filter(pl.col("path").str.starts_with("bad.csv"))["path"].to_list() == ["bad.csv:1"]
    skipped = pl.read_csv(tmp_path / "predictions.skipped.csv")
    assert skipped.row(0)[0] == "bad.csv:2"


@pytest.mark.slow
def test_an_image_augmentation_on_feature_vectors_is_a_located_error_before_anything_trains(site, tmp_path):
    _tables(tmp_path)
    experiment = json.loads(json.dumps(EXPERIMENT))
    experiment["stages"][1]["augment"] = {"crop_padding": 2}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
    result = mentor_cli(site, "run", "experiment.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "experiment.yaml:" in result.stderr and "stages[1].augment" in result.stderr
    assert "feature vectors have no crop or flip" in result.stderr
    assert "Traceback" not in result.stderr
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tabular")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    assert [r.info.status for r in runs if r.info.status == "FAILED"] == []  # refused before any run began


@pytest.mark.slow
def test_a_source_of_a_modality_nobody_registered_is_a_located_error(tmp_path):
    package = tmp_path / "pkg"
    (package / "mentor_audio_source").mkdir(parents=True)
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "mentor-audio-source"\nversion = "0.1.0"\n'
        '[project.entry-points.mentor]\naudio_source = "mentor_audio_source"\n'
        '[tool.setuptools]\npackages = ["mentor_audio_source"]\n')
    (package / "mentor_audio_source" / "__init__.py").write_text(
        "import torch\nimport mentor\n\n"
        "def clips():\n"
        "    x, y = torch.randn(40, 1, 160), torch.arange(40) % 2\n"
        "    info = mentor.DataInfo(num_classes=2, in_channels=1, image_size=(), mean=(0.0,), std=(1.0,),\n"
        "                           modality='audio')\n"
        "    return mentor.DataBundle(mentor.ExampleSet(x, y), mentor.ExampleSet(x[:8], y[:8]), info)\n\n"
        "@mentor.hookimpl\n"
        "def register_data_sources(register):\n"
        "    register('clips', clips)\n")
    site = tmp_path / "site"
    pip_install(package, site)
    experiment = {"name": "audio", "data": {"source": "clips"}, "models": {"m": {"name": "small_cnn"}},
                  "stages": [{"name": "train", "kind": "train", "model": "m"}]}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
    result = mentor_cli(site, "validate", "experiment.yaml", "--data", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "experiment.yaml:" in result.stderr and "data.source" in result.stderr
    assert "modality 'audio', which no installed plugin registers (known: image)" in result.stderr
    assert "Traceback" not in result.stderr
