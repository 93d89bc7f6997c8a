"""Loss weights that follow a schedule: the formula, DKD's warm-up as one case, validation, a run's record."""

from __future__ import annotations

import math

import pytest
import torch
from mlflow import MlflowClient

from mentor import WeightSchedule
from mentor.config import validate_document
from mentor.config.document import Document
from mentor.losses import Outputs
from mentor.pipeline import run_experiment
from mentor.tracking.store import tracking_uri
from mentor_plugins.feature_losses import DKD


def test_linear_and_cosine_values_by_hand():
    ramp = WeightSchedule(start=4.0, end=1.0, epochs=3)
    assert [ramp.at(e) for e in range(5)] == pytest.approx([3.0, 2.0, 1.0, 1.0, 1.0])  # 4 - 3 (e + 1) / 3
    cos = WeightSchedule(start=0.0, end=2.0, epochs=4, shape="cosine")
    assert [cos.at(e) for e in range(4)] == pytest.approx(
        [2 * (1 - math.cos(math.pi * (e + 1) / 4)) / 2 for e in range(4)])
    assert cos.at(10) == 2.0 and ramp.peak == 4.0


def test_dkd_warmup_is_a_weight_schedule():
    """DKD's built-in warm-up of 20 epochs = DKD without warm-up under weight {start: 0, end: 1, epochs: 20}."""
    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.tensor([0, 1, 2, 3, 4, 0])
    schedule = WeightSchedule(start=0.0, end=1.0, epochs=20)
    for epoch in (0, 1, 9, 19, 20, 100):
        built_in = DKD(warmup_epochs=20)(Outputs(student_logits=s, teacher_logits=t, labels=y, epoch=epoch))
        scheduled = schedule.at(epoch) * DKD(warmup_epochs=0)(Outputs(student_logits=s, teacher_logits=t, labels=y))
        assert math.isclose(built_in.item(), scheduled.item(), rel_tol=1e-6), epoch


def config(tiny_config, weight, epochs=3):
    c = dict(tiny_config)
    c["tracking"] = {"log_model": False}
    c["stages"] = [
        {"name": "teacher", "kind": "train", "model": "teacher", "epochs": 1, "batch_size": 32},
        {"name": "kd", "kind": "distill", "teacher": "teacher", "student": "student", "epochs": epochs,
         "batch_size": 32, "losses": [{"name": "cross_entropy"}, {"name": "kd", "weight": weight}]},
    ]
    return c


@pytest.mark.slow
def test_a_scheduled_weight_is_applied_and_logged_per_epoch(workdir, plugins, tiny_config):
    weight = {"start": 4.0, "end": 1.0, "epochs": 3}  # FitNets' annealed KD weight, over the whole stage
    run_experiment(validate_document(Document("t", config(tiny_config, weight)), plugins.registry), plugins)
    client = MlflowClient(tracking_uri())
    [kd] = [r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
            if r.data.tags.get("mentor.stage") == "kd" and r.data.tags.get("mentor.kind") == "stage"]
    history = sorted(client.get_metric_history(kd.info.run_id, "train/weight/kd"), key=lambda m: m.step)
    assert [m.value for m in history] == pytest.approx([3.0, 2.0, 1.0])


@pytest.mark.parametrize(("weight", "where", "message"), [
    ({"start": 0, "end": 1, "epochs": 5}, "stages.1.losses.1.weight.epochs", "ramps over 5 epochs but the stage "
                                                                             "trains 3"),
    ({"start": 0, "end": 1, "epochs": 0}, "stages.1.losses.1.weight", "greater than or equal to 1"),
    ({"start": -1, "end": 1, "epochs": 2}, "stages.1.losses.1.weight", "greater than or equal to 0"),
])
@pytest.mark.slow
def test_bad_schedules_are_located_errors(tiny_config, plugins, weight, where, message):
    from mentor.config import ConfigError

    with pytest.raises(ConfigError) as info:
        validate_document(Document("t", config(tiny_config, weight)), plugins.registry)
    text = str(info.value)
    assert message in text and where.replace(".", "") in text.replace(".", "").replace("[", "").replace("]", ""), text
