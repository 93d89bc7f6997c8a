"""Shared fixtures: a tiny synthetic data source and an isolated MLflow store."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from mentor import DataBundle, DataInfo, ImageSet, Params, hookimpl
from mentor.plugins import load_plugins


def synthetic_images(n: int, seed: int, classes: int = 4, size: int = 8, channels: int = 1):
    """Class c is a bright square in quadrant c % 4 plus noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 60, (n, channels, size, size), generator=g)
    half = size // 2
    for c in range(classes):
        r, col = divmod(c % 4, 2)
        images[labels == c, :, r * half:(r + 1) * half, col * half:(col + 1) * half] += 150
    return ImageSet(images.clamp(0, 255).to(torch.uint8), labels)


class SyntheticParams(Params):
    train_size: int = 400
    test_size: int = 200
    channels: int = 1
    size: int = 8


class SyntheticData:
    """An in-process plugin: a data source that needs no files."""

    @hookimpl
    def register_data_sources(self, register):
        def synthetic(train_size, test_size, channels, size):
            info = DataInfo(4, channels, (size, size), (0.3,) * channels, (0.3,) * channels, ("a", "b", "c", "d"))
            return DataBundle(synthetic_images(train_size, 0, size=size, channels=channels),
                              synthetic_images(test_size, 1, size=size, channels=channels), info)

        register("synthetic", synthetic, params=SyntheticParams, description="test data")


@pytest.fixture
def plugins():
    return load_plugins(extra=[SyntheticData()])


TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"source": "synthetic", "val_size": 80},
    "models": {
        "teacher": {"name": "small_cnn", "params": {"channels": [8, 8]}},
        "student": {"name": "small_cnn", "params": {"channels": [4]}},
    },
    "stages": [
        {"name": "teacher", "kind": "train", "model": "teacher", "epochs": 2, "batch_size": 32,
         "optimizer": {"lr": 0.05}},
        {"name": "student", "kind": "distill", "teacher": "teacher", "student": "student",
         "epochs": 3, "batch_size": 32, "optimizer": {"lr": 0.05},
         "losses": [{"name": "cross_entropy", "weight": 0.5},
                    {"name": "kd", "weight": 0.5, "params": {"temperature": 2}}]},
    ],
    "engine": {"progress": "none"},
    "tracking": {"log_model": True},
}


@pytest.fixture
def tiny_config():
    return copy.deepcopy(TINY)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run inside tmp_path with MLflow's store there (mlruns/ as in real use)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield tmp_path
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def write_yaml(tmp_path):
    def write(data, name="experiment.yaml"):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write
