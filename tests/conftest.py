"""Shared fixtures: a tiny synthetic data source and an isolated MLflow store.

Also the suite's hygiene: every test gets back the process environment it
started with (and fails if it leaked an MLFLOW_* variable), and the fast tier
(`pytest -m "not slow"`) names any of its tests that took long enough to
belong to the slow one.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import yaml

from mentor import DataBundle, DataInfo, ImageSet, Params, hookimpl
from mentor.plugins import load_plugins


def foreign_imports(folder, third_party: set[str]) -> list[str]:
    """What the modules in ``folder`` import besides ``mentor`` itself, the standard library and
    ``third_party``: a plugin package written against the public API has none (``mentor.<module>`` counts)."""
    import ast
    import sys
    from pathlib import Path

    found = []
    for path in sorted(Path(folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                if name != "mentor" and (top == "mentor" or not (top in third_party or top in
                                                                   sys.stdlib_module_names)):
                    found.append(f"{path.name} imports {name}")
    return found


def pip_install(package, target) -> None:
    """A plugin package pip-installed (no dependencies) into ``target``, a folder that goes on the path: how a
    third-party package under tests/packages reaches mentor, through its entry points."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(package)], check=True, capture_output=True)


def mentor_with(site, *args, cwd):
    """``mentor ARGS`` in a subprocess that sees the packages installed in ``site`` (``pip_install``)."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "mentor.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd)


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


# --- hygiene: no test changes the environment of the next ------------------------------------------

_LEAKS: list[str] = []


def _mlflow_vars(env) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("MLFLOW_")}


@pytest.fixture(autouse=True)
def _environment_restored(request):
    """Put back os.environ and MLflow's fluent tracking URI after each test; an MLFLOW_* leak fails it.

    ``mlflow.set_tracking_uri`` writes MLFLOW_TRACKING_URI into the environment, so a test that
    points MLflow somewhere and does not put it back sends every later test's runs there.
    Autouse and function-scoped, this is set up before and torn down after the test's own
    fixtures (monkeypatch included), so what monkeypatch undoes is not counted as a leak.
    """
    from mlflow.tracking._tracking_service import utils as tracking_utils

    before = dict(os.environ)
    uri_before = tracking_utils._tracking_uri
    yield
    after = dict(os.environ)
    leaked = sorted(k for k in _mlflow_vars(before).keys() | _mlflow_vars(after).keys()
                    if before.get(k) != after.get(k))
    uri_leaked = tracking_utils._tracking_uri != uri_before
    os.environ.clear()
    os.environ.update(before)
    tracking_utils._tracking_uri = uri_before
    if leaked or uri_leaked:
        what = ", ".join(f"{k}={after.get(k)!r} (was {before.get(k)!r})" for k in leaked)
        if uri_leaked and not leaked:
            what = "MLflow's tracking URI (mlflow.set_tracking_uri without putting it back)"
        _LEAKS.append(f"{request.node.nodeid}: {what}")
        pytest.fail(f"this test leaked {what} into later tests; restore it (monkeypatch.setenv, or "
                    "mentor.tracking.tracker.fluent_tracking_uri)", pytrace=False)


# --- tiers: `pytest -m "not slow"` is the check before a commit (the marker: pyproject.toml) ---------

FAST_TIER_LIMIT_S = 10.0  # a fast-tier test slower than this is named at the end of the run


_SLOW_UNMARKED: list[tuple[str, float]] = []


def pytest_runtest_logreport(report):
    if report.when == "call" and report.duration > FAST_TIER_LIMIT_S and "slow" not in report.keywords:
        _SLOW_UNMARKED.append((report.nodeid, report.duration))


def pytest_terminal_summary(terminalreporter):
    if _SLOW_UNMARKED:
        terminalreporter.section("fast-tier tests that belong in the slow tier")
        for nodeid, seconds in sorted(_SLOW_UNMARKED, key=lambda item: -item[1]):
            terminalreporter.write_line(f"{seconds:6.1f}s  {nodeid}  (over {FAST_TIER_LIMIT_S:.0f}s: "
                                        "mark it @pytest.mark.slow or make it smaller)")
    if _LEAKS:
        terminalreporter.section("tests that leaked MLFLOW_* variables")
        for line in _LEAKS:
            terminalreporter.write_line(line)
