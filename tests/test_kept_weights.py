"""What a stage keeps: the best epoch's weights (or the last), and the metrics that measured them;
a diverged stage fails instead of reporting success."""

import subprocess
import sys

import pytest
import torch
from mlflow import MlflowClient

from mentor.config import ConfigError, validate_document
from mentor.config.document import Document
from mentor.engine import checkpoint
from mentor.pipeline import run_experiment

from .conftest import TINY


def experiment(config, plugins):
    return validate_document(Document("test", config), plugins.registry)


def noisy_teacher(config, keep):
    """One stage whose val accuracy goes up and down: a high constant learning rate."""
    config["stages"] = [dict(config["stages"][0], epochs=6, keep=keep, optimizer={"lr": 0.6, "momentum": 0.9},
                             schedule={"name": "constant"})]
    config["tracking"]["log_model"] = False
    return config


def accuracy_of_saved_weights(result, exp, plugins, split):
    """Val/test accuracy of the weights file the stage handed on, measured afresh."""
    from mentor.data.loader import Batches
    from mentor.engine.loop import evaluate
    from mentor.engine.runtime import Runtime
    from mentor.pipeline import ExperimentRunner

    splits = ExperimentRunner(exp, plugins).load_data()
    spec = exp.models["teacher"]
    model = plugins.registry.get("model", spec.name).factory(splits.info.num_classes, splits.info.in_channels,
                                                              **spec.params)
    checkpoint.load_weights(model, checkpoint.load(result.weights), result.weights)
    data = {"val": splits.val, "test": splits.test}[split]
    runtime = Runtime(torch.device("cpu"), None, False, False, "none")
    batches = Batches(data, 1024, shuffle=False, mean=splits.info.mean, std=splits.info.std)
    return evaluate(model, batches, runtime)["accuracy"]


@pytest.mark.parametrize("keep", ["best", "last"])
@pytest.mark.slow
def test_the_kept_weights_are_the_ones_the_kept_metrics_measured(workdir, plugins, tiny_config, keep):
    exp = experiment(noisy_teacher(tiny_config, keep), plugins)
    result = run_experiment(exp, plugins)["teacher"]
    m = result.metrics
    val = [epoch["val/accuracy"] for epoch in result.history]
    best_epoch = max(range(len(val)), key=lambda e: (val[e], -e))
    assert best_epoch != len(val) - 1, f"the test needs a best epoch before the last: {val}"
    assert m["best.epoch"] == best_epoch + 1  # 1-based, as printed and logged
    assert m["kept.epoch"] == (best_epoch if keep == "best" else len(val) - 1) + 1
    expected = m[f"{keep}.test.accuracy"]
    assert m["kept.test.accuracy"] == expected
    assert accuracy_of_saved_weights(result, exp, plugins, "test") == pytest.approx(expected, abs=1e-9)
    assert accuracy_of_saved_weights(result, exp, plugins, "val") == pytest.approx(m[f"{keep}.val.accuracy"],
                                                                                    abs=1e-9)


@pytest.mark.slow
def test_a_diverging_stage_fails_without_saving_the_bad_epoch(workdir, write_yaml):
    config = {**TINY, "data": {"source": "fashion_mnist", "val_size": 100, "test_size": 100},
              "models": {"m": {"name": "small_cnn", "params": {"channels": [4]}}},
              "stages": [{"name": "boom", "kind": "train", "model": "m", "epochs": 2, "batch_size": 64,
                          "train_subset": 256, "optimizer": {"lr": 1e12}}]}
    import os
    from pathlib import Path

    if not Path(os.environ.get("MENTOR_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")).is_dir():
        pytest.skip("Fashion-MNIST is not installed")
    path = write_yaml(config)
    done = subprocess.run([sys.executable, "-m", "mentor.cli", "run", str(path)], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert "stage 'boom' diverged: the loss was NaN or infinite on" in done.stderr
    assert "epoch 1" in done.stderr and "Traceback" not in done.stderr
    c = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlruns/mlflow.db")
    runs = c.search_runs([c.get_experiment_by_name("tiny").experiment_id])
    assert runs and {r.info.status for r in runs} == {"FAILED"}
    assert not list(Path(workdir).rglob("checkpoint.pt"))  # the NaN epoch was never saved

    config["stages"][0]["max_nonfinite_steps"] = 10_000  # allowed: it runs to the end (and says so in metrics)
    path = write_yaml(config)
    done = subprocess.run([sys.executable, "-m", "mentor.cli", "run", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("metric, why", [("test/accuracy", "would pick the epoch by the test set"),
                                         ("accuracy", "is not an epoch metric")])
def test_select_on_refuses_the_test_set(plugins, tiny_config, metric, why):
    tiny_config["stages"][0]["select_on"] = metric
    with pytest.raises(ConfigError, match=why) as info:
        experiment(tiny_config, plugins)
    assert "stages[0].select_on" in str(info.value) and "Value error" not in str(info.value)


def test_nonfinite_losses_are_counted_on_the_device_and_checked_per_epoch():
    from mentor.engine.loop import TrainingDiverged, check_finite

    check_finite(torch.tensor(2), 10, 2, "s", 0)  # within the allowance
    with pytest.raises(TrainingDiverged, match="on 3 of 10 steps of epoch 4"):
        check_finite(torch.tensor(3), 10, 2, "s", 3)
