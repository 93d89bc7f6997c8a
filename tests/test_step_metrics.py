"""Per-step metrics: the training loss, its terms, training accuracy and the learning rate a step used,
on their own step axis beside the per-epoch curves (what MLflow's charts draw)."""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient

from mentor.config import validate_document
from mentor.config.document import Document
from mentor.pipeline import run_experiment


def values(c: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in c.get_metric_history(run_id, key)}


def stage_run(c: MlflowClient, stage: str) -> str:
    exp = c.get_experiment_by_name("tiny")
    [run] = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("mentor.stage") == stage
             and r.data.tags.get("mentor.kind") == "stage"]
    return run.info.run_id


@pytest.mark.slow
def test_every_step_is_logged_and_the_epoch_figures_are_their_means(workdir, plugins, tiny_config):
    tiny_config["tracking"].update(log_every_steps=1, log_model=False)
    tiny_config["stages"][1]["schedule"] = {"name": "cosine", "warmup_epochs": 0}
    run_experiment(validate_document(Document("tiny", tiny_config), plugins.registry), plugins)
    c = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    student = stage_run(c, "student")
    # 400 synthetic images - 80 for validation = 320, batch 32: 10 steps an epoch, 3 epochs
    loss = values(c, student, "step/train/loss")
    assert sorted(loss) == list(range(1, 31))
    epoch_loss = values(c, student, "train/loss")
    for epoch in (1, 2, 3):  # the epoch's train/loss is the mean of its ten steps' losses
        steps = range((epoch - 1) * 10 + 1, epoch * 10 + 1)
        assert epoch_loss[epoch] == pytest.approx(sum(loss[s] for s in steps) / 10, rel=1e-5)
    for term in ("step/train/loss/kd", "step/train/loss/cross_entropy", "step/train/accuracy"):
        assert len(values(c, student, term)) == 30, term
    accuracy = values(c, student, "step/train/accuracy")
    assert all(a * 32 == pytest.approx(round(a * 32)) for a in accuracy.values())  # k right of 32 images
    assert values(c, student, "train/accuracy")[3] == pytest.approx(sum(accuracy[s] for s in range(21, 31)) / 10)

    # the rate each step used: cosine from 0.05 down over 30 steps, the epoch's figure its first step's
    lr = values(c, student, "step/lr")
    assert lr[1] == pytest.approx(0.05)
    for step in (1, 11, 21):
        assert lr[step] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * (step - 1) / 30)), rel=1e-6)
    assert values(c, student, "lr") == {1: lr[1], 2: lr[11], 3: lr[21]}
    assert all(lr[s] > lr[s + 1] for s in range(1, 30))

    teacher = stage_run(c, "teacher")  # a train stage: cross-entropy and its training accuracy
    assert sorted(values(c, teacher, "step/train/loss")) == list(range(1, 21))
    assert 0 <= values(c, teacher, "train/accuracy")[2] <= 1


@pytest.mark.slow
def test_steps_are_logged_at_the_chosen_interval_and_can_be_turned_off(workdir, plugins, tiny_config):
    tiny_config["tracking"].update(log_every_steps=4, log_model=False)
    run_experiment(validate_document(Document("tiny", tiny_config), plugins.registry), plugins)
    c = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    assert sorted(values(c, stage_run(c, "student"), "step/train/loss")) == [4, 8, 12, 16, 20, 24, 28]

    tiny_config.update(name="tiny-off")
    tiny_config["tracking"]["log_every_steps"] = 0
    run_experiment(validate_document(Document("tiny", tiny_config), plugins.registry), plugins)
    exp = c.get_experiment_by_name("tiny-off")
    for run in c.search_runs([exp.experiment_id]):
        assert not any(key.startswith("step/") for key in run.data.metrics), run.data.tags.get("mentor.stage")
